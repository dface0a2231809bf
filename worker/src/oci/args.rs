//! The flags every command that talks to a registry shares.

/// How to reach registries.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OciArgs {
    /// A registry (`HOST` or `HOST:PORT`, exactly as references name it) reached over plain
    /// HTTP instead of HTTPS. Repeatable, or comma-separated in the environment. Every other
    /// registry is HTTPS only: name here only a registry on a trusted network (a test registry
    /// on 127.0.0.1, a `registry:2` inside a compose network).
    #[arg(
        long = "insecure-registry",
        env = "WARREN_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}
