//! Compiles `proto/*.proto` into Rust with prost, in pure Rust: protox parses the files into a
//! descriptor set (no system `protoc`), prost-build generates the code into `OUT_DIR/strom.rs`,
//! which `src/messages.rs` includes.

use std::error::Error;
use std::path::PathBuf;

const PROTO_DIR: &str = "proto";

fn main() -> Result<(), Box<dyn Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(PROTO_DIR)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "proto"));
    // A stable order keeps the generated file identical from build to build.
    files.sort();

    println!("cargo:rerun-if-changed={PROTO_DIR}");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let names: Vec<PathBuf> = files
        .iter()
        .filter_map(|path| path.file_name().map(PathBuf::from))
        .collect();
    let descriptors = protox::compile(&names, [PROTO_DIR])?;

    prost_build::Config::new()
        // Every `bytes` field decodes as `bytes::Bytes`: decoding from a `Bytes` frame slices it,
        // so record batches are never copied out of the read buffer.
        .bytes(["."])
        // Config maps in a stable order: deterministic encodings and readable test failures.
        .btree_map(["."])
        // The wire's ErrorCode enum is the hand-written `error_code::ErrorCode` (an i16 view with
        // `is_retriable`), so generated getters return it and there is one ErrorCode type.
        .extern_path(".strom.ErrorCode", "crate::error_code::ErrorCode")
        .compile_fds(descriptors)?;
    Ok(())
}
