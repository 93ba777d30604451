octconv::octnet! {
    model bad() {
        input [3, 32, 32];
        octconv(64, kernel = 3, alpha = 0.25, stride = 2);
        octconv(64, kernel = 3, stride = 2);
        global_avg_pool();
        linear(10);
    }
    pub struct Bad = bad();
}

fn main() {}
