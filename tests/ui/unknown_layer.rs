octconv::octnet! {
    model bad() {
        input [3, 8, 8];
        octcov(16, kernel = 3);
        global_avg_pool();
    }
    pub struct Bad = bad();
}

fn main() {}
