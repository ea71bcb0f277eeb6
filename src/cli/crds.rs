//! `dag-operator crds`: the CRDs as YAML, on stdout or one file per CRD.

use std::path::PathBuf;

use clap::Args;

use super::CliError;

#[derive(Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD (<plural>.yaml) into this directory instead of printing.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub fn run(args: &CrdsArgs) -> Result<(), CliError> {
    let files = dag_operator::api::crd_files()
        .map_err(|e| CliError::runtime(format!("cannot render CRDs: {e}")))?;
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::runtime(format!("cannot create {}: {e}", dir.display())))?;
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|e| {
                    CliError::runtime(format!("cannot write {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let docs: Vec<String> = files.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}
