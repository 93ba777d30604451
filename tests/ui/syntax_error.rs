octconv::octnet! {
    model bad() {
        input [3, 8, 8]
        relu();
    }
    pub struct Bad = bad();
}

fn main() {}
