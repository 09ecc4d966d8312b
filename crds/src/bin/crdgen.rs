//! Prints the ModelDeployment CRD YAML generated from the Rust types.
//! `cargo run -p edgefleet-crds --bin crdgen > crds/modeldeployment.yaml`

fn main() -> std::process::ExitCode {
    match edgefleet_crds::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("crdgen: cannot serialize the CRD: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
