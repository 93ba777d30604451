octconv::octnet! {
    pub struct = wrn();
}

octconv::octnet!(wrn[n = 1]);

octconv::octnet! {}

fn main() {}
