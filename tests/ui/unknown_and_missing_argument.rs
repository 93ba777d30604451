octconv::octnet! {
    model bad() {
        input [3, 8, 8];
        conv(16, kernl = 3);
        linear();
    }
    pub struct Bad = bad();
}

fn main() {}
