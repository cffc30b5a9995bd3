//! Compiles every `.proto` under `shopmesh/` with protox (pure Rust, no `protoc`), writes the
//! encoded descriptor set the edge reads at run time, generates tonic code for our packages and
//! a module tree that mirrors the proto packages, so a new service needs no edit here.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use protox::Compiler;
use protox::file::{
    ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// Packages we generate Rust for. `google.api` is included because `HttpBody` is a message type
/// our webhook method takes; everything else imported (buf.validate, google.protobuf) comes from
/// existing crates.
fn generates_code(package: &str) -> bool {
    package.starts_with("shopmesh.") || package == "google.api"
}

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=shopmesh");
    println!("cargo:rerun-if-changed=google");

    let mut files = Vec::new();
    collect_protos(&root, Path::new("shopmesh"), &mut files)?;
    files.sort();

    let mut resolver = ChainFileResolver::new();
    resolver.add(IncludeFileResolver::new(root.clone()));
    // buf/validate/validate.proto, taken from the crate the validator itself uses.
    let validate = prost_protovalidate_types::DESCRIPTOR_POOL.encode_to_vec();
    resolver.add(DescriptorSetFileResolver::decode(validate.as_slice())?);
    resolver.add(GoogleFileResolver::new());

    let mut compiler = Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    // The runtime descriptor set must be encoded by protox itself: re-encoding the prost_types
    // form drops extension options (google.api.http, buf.validate, shopmesh.options).
    fs::write(
        out.join("shopmesh_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // prost-build needs every message type our fields use, so the well-known types stay in the
    // set (prost maps them to prost-types); buf.validate is only ever an option, never a field.
    let mut set = compiler.file_descriptor_set();
    set.file
        .retain(|file| generates_code(file.package()) || file.package() == "google.protobuf");
    let mut packages: Vec<String> = set
        .file
        .iter()
        .map(|f| f.package().to_owned())
        .filter(|p| generates_code(p))
        .collect();
    packages.sort();
    packages.dedup();
    // Type names let the validating codec find a message's descriptor.
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::ValidatingCodec")
        .compile_fds_with_config(set, config)?;

    fs::write(out.join("packages.rs"), module_tree(&packages))?;
    Ok(())
}

fn collect_protos(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(root.join(dir))? {
        let entry = entry?;
        let relative = dir.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect_protos(root, &relative, files)?;
        } else if relative.extension().is_some_and(|ext| ext == "proto") {
            files.push(relative);
        }
    }
    Ok(())
}

/// A tree of nested `pub mod`s, one leaf per proto package, each including its generated file.
#[derive(Default)]
struct Node(BTreeMap<String, Node>, Option<String>);

fn module_tree(packages: &[String]) -> String {
    let mut tree = Node::default();
    for package in packages {
        let mut node = &mut tree;
        for part in package.split('.') {
            node = node.0.entry(part.to_owned()).or_default();
        }
        node.1 = Some(package.clone());
    }
    let mut code = String::new();
    render(&tree, &mut code);
    code
}

fn render(node: &Node, code: &mut String) {
    if let Some(package) = &node.1 {
        let _ = writeln!(
            code,
            "include!(concat!(env!(\"OUT_DIR\"), \"/{package}.rs\"));"
        );
    }
    for (name, child) in &node.0 {
        let _ = writeln!(code, "pub mod {name} {{");
        render(child, code);
        let _ = writeln!(code, "}}");
    }
}
