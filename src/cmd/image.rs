//! `skiff image`: build the project's busybox image, import archives into a node's
//! content store, push archives to a registry, pull and list.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use skiff_nodeagent::image::{builder, ArchiveFormat, ImageStore, PullPolicy, RegistryCredential};

/// Arguments of `skiff image`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build a busybox image from the static busybox binary and write it as a tar.
    BuildBusybox {
        /// The archive to write.
        #[arg(long)]
        output: PathBuf,
        /// Image name.
        #[arg(long, default_value = builder::DEFAULT_NAME)]
        name: String,
        /// The static busybox binary (Debian's busybox-static).
        #[arg(long, default_value = builder::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
        /// Archive layout.
        #[arg(long, value_enum, default_value_t = Format::Oci)]
        format: Format,
    },
    /// Import an OCI layout or docker-archive tar into a node's content store.
    Import {
        file: PathBuf,
        /// The node agent's data directory (the store is DIR/images).
        #[arg(long)]
        data_dir: PathBuf,
        /// Tag for an image the archive does not name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Push the image in an archive to a registry.
    Push {
        file: PathBuf,
        /// Target reference, e.g. 127.0.0.1:5000/busybox:latest.
        reference: String,
        /// Talk plain HTTP to the target registry.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        creds: Creds,
    },
    /// Pull an image into a node's content store.
    Pull {
        reference: String,
        #[arg(long)]
        data_dir: PathBuf,
        /// Registries (host:port) reached over plain HTTP.
        #[arg(long, value_delimiter = ',')]
        insecure_registry: Vec<String>,
        #[command(flatten)]
        creds: Creds,
    },
    /// List the images of a node's content store.
    List {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct Creds {
    /// Registry user name (basic auth).
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "SKIFF_REGISTRY_PASSWORD", requires = "username")]
    password: Option<String>,
}

impl Creds {
    fn for_reference(&self, reference: &str) -> Vec<RegistryCredential> {
        match (&self.username, &self.password) {
            (Some(username), Some(password)) => vec![RegistryCredential {
                registry: registry_of(reference),
                username: username.clone(),
                password: password.clone(),
            }],
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// OCI image layout (also loadable by docker).
    Oci,
    /// Legacy docker-archive.
    Docker,
}

/// The registry part of a reference (`docker.io` when it names none).
fn registry_of(reference: &str) -> String {
    skiff_nodeagent::image::ImageRef::parse(reference)
        .map(|r| r.registry().to_string())
        .unwrap_or_default()
}

fn open_store(data_dir: &Path, insecure: Vec<String>) -> Result<ImageStore> {
    ImageStore::open(data_dir.join("images"), insecure)
        .with_context(|| format!("opening the image store in {}", data_dir.display()))
}

pub async fn run(args: Args) -> Result<()> {
    match args.command {
        ImageCommand::BuildBusybox {
            output,
            name,
            busybox,
            format,
        } => {
            let format = match format {
                Format::Oci => ArchiveFormat::Oci,
                Format::Docker => ArchiveFormat::Docker,
            };
            builder::build_busybox(&busybox, &name, format, &output)
                .with_context(|| format!("building {name}"))?;
            println!("{name} written to {}", output.display());
        }
        ImageCommand::Import {
            file,
            data_dir,
            name,
        } => {
            let store = open_store(&data_dir, Vec::new())?;
            for image in store.import(&file, name.as_deref())? {
                println!("imported {} {}", image.reference, image.id);
            }
        }
        ImageCommand::Push {
            file,
            reference,
            insecure,
            creds,
        } => push(&file, &reference, insecure, &creds).await?,
        ImageCommand::Pull {
            reference,
            data_dir,
            insecure_registry,
            creds,
        } => {
            let store = open_store(&data_dir, insecure_registry)?;
            let image = store
                .ensure(
                    &reference,
                    PullPolicy::Always,
                    &creds.for_reference(&reference),
                )
                .await?;
            println!(
                "pulled {} {} {}",
                image.reference, image.repo_digest, image.id
            );
        }
        ImageCommand::List { data_dir } => {
            let store = open_store(&data_dir, Vec::new())?;
            println!("{:<50} {:<20}", "REFERENCE", "IMAGE ID");
            for image in store.list()? {
                let short = image.id.trim_start_matches("sha256:");
                println!(
                    "{:<50} {:<20}",
                    image.reference,
                    &short[..short.len().min(12)]
                );
            }
        }
    }
    Ok(())
}

/// Imports the archive into a scratch store and pushes its single image.
async fn push(file: &Path, reference: &str, insecure: bool, creds: &Creds) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("skiff-image-push-{}", std::process::id()));
    let insecure = if insecure {
        vec![registry_of(reference)]
    } else {
        Vec::new()
    };
    let result = async {
        let store = ImageStore::open(scratch.clone(), insecure)?;
        let images = store.import(file, None)?;
        let Some(image) = images.first() else {
            bail!("{} holds no image", file.display());
        };
        if images.iter().any(|i| i.id != image.id) {
            bail!("{} holds several images; push takes one", file.display());
        }
        store
            .push(&image.reference, reference, &creds.for_reference(reference))
            .await?;
        println!("pushed {} as {reference}", image.reference);
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
