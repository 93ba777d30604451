octconv::octnet! {
    use "no_such_file.oct";
    pub struct Bad = bad();
}

fn main() {}
