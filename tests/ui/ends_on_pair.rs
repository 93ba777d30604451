octconv::octnet! {
    model bad() {
        input [3, 8, 8];
        octconv(16, kernel = 3, alpha = 0.5);
    }
    pub struct Bad = bad();
}

fn main() {}
