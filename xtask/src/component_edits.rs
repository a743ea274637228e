//! Edits of built components for benches and tests: a new digest without a
//! new behaviour, and a component that takes long to compile.

/// Appends a custom section named `bench` holding `n`: a valid component
/// with a new digest, so nothing can be reused from an earlier compile.
#[must_use]
pub fn with_custom_section(component: &[u8], n: usize) -> Vec<u8> {
    let mut contents = Vec::new();
    push_name(&mut contents, "bench");
    contents.extend_from_slice(&n.to_le_bytes());
    with_section(component, 0, &contents)
}

/// Appends a core module that nothing instantiates, holding one function of
/// `operations` chained additions over 64 locals. The component behaves as
/// before, but wasmtime compiles every core module it carries, and one huge
/// function is the worst case for a compiler (register allocation over the
/// whole body, no parallelism): a module that is slow to compile.
/// wasmparser refuses a function body over 7,654,321 bytes (about 2.4
/// million operations here).
#[must_use]
pub fn with_huge_function(component: &[u8], operations: usize) -> Vec<u8> {
    with_section(component, 1, &huge_function_module(operations))
}

/// A core module exporting `f: () -> i32`, whose body mixes 64 locals
/// pseudo-randomly so nothing folds away.
fn huge_function_module(operations: usize) -> Vec<u8> {
    const LOCALS: u32 = 64;
    let mut body = Vec::new();
    push_leb(&mut body, 1); // one group of locals
    push_leb(&mut body, LOCALS);
    body.push(0x7f); // i32
    let mut state: u32 = 0x9e37_79b9;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state % LOCALS
    };
    // Groups of 500 values live at once on the operand stack, then folded:
    // register pressure far beyond any machine's registers.
    const LIVE: usize = 500;
    for _ in 0..operations / LIVE {
        for _ in 0..LIVE {
            body.push(0x20); // local.get
            push_leb(&mut body, next());
        }
        for n in 1..LIVE {
            body.push(if n % 3 == 0 { 0x6c } else { 0x6a }); // i32.mul / i32.add
        }
        body.push(0x21); // local.set
        push_leb(&mut body, next());
    }
    body.push(0x20);
    push_leb(&mut body, 0);
    body.push(0x0b); // end

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    push_section(&mut module, 1, &[1, 0x60, 0, 1, 0x7f]); // type: () -> i32
    push_section(&mut module, 3, &[1, 0]); // function 0 has type 0
    let mut export = vec![1];
    push_name(&mut export, "f");
    export.extend_from_slice(&[0, 0]); // func 0
    push_section(&mut module, 7, &export);
    let mut code = vec![1];
    push_leb(&mut code, u32::try_from(body.len()).expect("a function body under 4 GiB"));
    code.extend_from_slice(&body);
    push_section(&mut module, 10, &code);
    module
}

fn with_section(component: &[u8], id: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = component.to_vec();
    push_section(&mut out, id, contents);
    out
}

fn push_section(out: &mut Vec<u8>, id: u8, contents: &[u8]) {
    out.push(id);
    push_leb(out, u32::try_from(contents.len()).expect("a section under 4 GiB"));
    out.extend_from_slice(contents);
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    push_leb(out, u32::try_from(name.len()).expect("a short name"));
    out.extend_from_slice(name.as_bytes());
}

fn push_leb(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
