// The error is in the second `use`d file: the compile error points at that `use` line, not at the
// first one.
octconv::octnet! {
    use "blocks_ok.oct";
    use "bad_head.oct";
    pub struct Bad = bad_head();
}

fn main() {}
