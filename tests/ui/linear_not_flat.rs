octconv::octnet! {
    model bad() {
        input [3, 8, 8];
        conv(16, kernel = 3);
        linear(10);
    }
    pub struct Bad = bad();
}

fn main() {}
