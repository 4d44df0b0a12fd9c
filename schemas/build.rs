//! Compiles `levee.fbs` with planus (pure Rust, no flatc or C++ toolchain)
//! so the generated code always matches the schema.

use std::path::PathBuf;

fn main() {
    let schema = PathBuf::from("levee.fbs");
    println!("cargo:rerun-if-changed=levee.fbs");
    let Some(decls) = planus_translation::translate_files(&[&schema]) else {
        panic!("levee.fbs has errors (see above)");
    };
    let code = match planus_codegen::generate_rust(&decls, false) {
        Ok(code) => code,
        Err(e) => panic!("generating Rust code from levee.fbs failed: {e}"),
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("levee_generated.rs"), code).expect("writing the generated code");
}
