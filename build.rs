//! Compiles proto/*.proto with prost, using protox (a pure-Rust protobuf
//! compiler) so that no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/remote.proto", "proto/types.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // `bytes` fields as `Bytes`: label names and values are zero-copy slices
    // of the decompressed body instead of one allocation each.
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
