octconv::octnet! {
    model bad() {
        input [3, 8, 8];
        conv(16, kernel = 3, stride = 2);
        expect [16, 8, 8];
        global_avg_pool();
    }
    pub struct Bad = bad();
}

fn main() {}
