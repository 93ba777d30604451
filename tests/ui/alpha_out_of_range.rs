octconv::octnet! {
    pub struct Wrn = wrn(n = 1, k = 1, alpha = 1.5);
}

fn main() {}
