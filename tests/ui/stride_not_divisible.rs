octconv::octnet! {
    model bad() {
        input [3, 30, 30];
        octconv(16, kernel = 3, stride = 2, alpha = 0.5);
        merge();
        global_avg_pool();
    }
    pub struct Bad = bad();
}

fn main() {}
