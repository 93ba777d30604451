octconv::octnet! {
    model bad(a: float = 2.0) {
        input [3, 8, 8];
        dropout(p = a);
        bn(eps = -1.0);
        gobal_avg_pool();
    }
    pub struct Bad = bad();
}

fn main() {}
