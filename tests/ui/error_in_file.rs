octconv::octnet! {
    use "bad_head.oct";
    pub struct Bad = bad_head();
}

fn main() {}
