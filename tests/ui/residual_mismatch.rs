octconv::octnet! {
    model bad() {
        input [8, 8, 8];
        residual {
            conv(16, kernel = 3);
        } shortcut {
            conv(8, kernel = 1);
        }
        global_avg_pool();
    }
    pub struct Bad = bad();
}

fn main() {}
