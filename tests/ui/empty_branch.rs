octconv::octnet! {
    model bad() {
        input [3, 8, 8];
        octconv(3, kernel = 3, alpha = 0.25);
        merge();
        global_avg_pool();
    }
    pub struct Bad = bad();
}

fn main() {}
