//! `flowers models`: list models, show a model's versions and promotions, import files as a
//! new version, promote one, roll back. A client of the control API like the other commands.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use client::{Client, ModelInfo, PromoteInfo, VersionInfo};

use crate::commands::{dash, gib, print_action, time};
use crate::table::Table;

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// A model's versions, newest first (the promoted one marked *), and its recent promotions.
    Show {
        /// The model.
        name: String,
    },
    /// Copy a file or a directory into a new version of a model.
    ///
    /// A model not known yet is created, with manual promotion; the model's promotion policy
    /// and retention apply at once.
    Import {
        /// The file or directory; a relative path is taken from the current directory. It must
        /// be on the machine Flowers runs on.
        path: PathBuf,
        /// The model it becomes a version of.
        #[arg(long)]
        model: String,
        /// A metric of the version, e.g. `--metric eval_loss=0.31`; repeat for more.
        #[arg(long = "metric", value_name = "KEY=VALUE", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
    },
    /// Make a version the promoted one; the services that follow the model move to it.
    Promote {
        /// The model.
        name: String,
        /// The version to promote.
        version: u32,
    },
    /// Promote again the version that was promoted before the current one.
    Rollback {
        /// The model.
        name: String,
    },
}

/// `eval_loss=0.31`: a metric name and a finite number.
fn parse_metric(text: &str) -> Result<(String, f64), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "expected KEY=VALUE (e.g. eval_loss=0.31), got {text:?}"
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the metric name before '=' is empty in {text:?}"));
    }
    let number: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{key}: expected a number, got {value:?}"))?;
    if !number.is_finite() {
        return Err(format!("{key}: expected a finite number, got {value:?}"));
    }
    Ok((key.to_string(), number))
}

pub async fn run(client: &Client, json: bool, action: Option<ModelsAction>) -> anyhow::Result<()> {
    match action {
        None => list(client, json).await,
        Some(ModelsAction::Show { name }) => show(client, json, &name).await,
        Some(ModelsAction::Import {
            path,
            model,
            metrics,
        }) => import(client, json, path, &model, metrics).await,
        Some(ModelsAction::Promote { name, version }) => {
            print_action(json, &client.promote(&name, version).await?);
            Ok(())
        }
        Some(ModelsAction::Rollback { name }) => {
            print_action(json, &client.rollback(&name).await?);
            Ok(())
        }
    }
}

/// For people: `manual`, `when eval_loss is lower`.
fn policy(promote: &PromoteInfo) -> String {
    match (&promote.metric, promote.mode.as_deref()) {
        (Some(metric), Some("min")) => format!("when {metric} is lower"),
        (Some(metric), Some("max")) => format!("when {metric} is higher"),
        _ => promote.policy.clone(),
    }
}

/// `2,3`, or `-` for none.
pub fn versions_list(versions: &[u32]) -> String {
    if versions.is_empty() {
        return "-".into();
    }
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let models = client.models().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!(
            "no models yet: declare one in flowers.toml ([models.NAME]) or import one with \
             `flowers models import PATH --model NAME`"
        );
        return Ok(());
    }
    let mut table = Table::new(&["MODEL", "PROMOTED", "SERVING", "VERSIONS", "POLICY"]);
    for model in &models {
        table.row(vec![
            model.name.clone(),
            dash(model.promoted.map(|v| v.to_string())),
            versions_list(&model.serving),
            model.versions.to_string(),
            format!("{} (keep {})", policy(&model.promote), model.keep),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// `eval_loss=0.31 accuracy=0.9`, or `-`.
fn metrics_text(metrics: &BTreeMap<String, f64>) -> String {
    if metrics.is_empty() {
        return "-".into();
    }
    metrics
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn header(model: &ModelInfo) -> String {
    format!(
        "model {}: promoted {}, serving {}, promotion {}, keep {}",
        model.name,
        dash(model.promoted.map(|v| v.to_string())),
        versions_list(&model.serving),
        policy(&model.promote),
        model.keep
    )
}

async fn show(client: &Client, json: bool, name: &str) -> anyhow::Result<()> {
    let detail = client.model(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(());
    }
    println!("{}", header(&detail.model));
    if detail.versions.is_empty() {
        println!(
            "no versions yet: a job registers them, or `flowers models import PATH --model {name}`"
        );
        return Ok(());
    }
    let mut table = Table::new(&["VERSION", "STATE", "METRICS", "CREATED", "SOURCE"]);
    let mut reasons = Vec::new();
    for version in &detail.versions {
        let promoted = detail.model.promoted == Some(version.version);
        table.row(vec![
            format!("{}{}", version.version, if promoted { "*" } else { "" }),
            version.state.clone(),
            metrics_text(&version.metrics),
            time(version.created_ms),
            version.source.clone(),
        ]);
        if let Some(reason) = &version.reason {
            reasons.push(format!("{}: {reason}", version.version));
        }
    }
    print!("{}", table.render());
    if detail.model.promoted.is_some() {
        println!("  * promoted");
    }
    for reason in reasons {
        println!("  {reason}");
    }
    if !detail.promotions.is_empty() {
        println!("\nPROMOTIONS (newest first)");
        for promotion in detail.promotions.iter().take(10) {
            let previous = promotion
                .previous
                .map(|p| format!(" (was {p})"))
                .unwrap_or_default();
            println!(
                "  {}  {}{previous}: {}",
                time(promotion.time_ms),
                promotion.version,
                promotion.reason
            );
        }
    }
    Ok(())
}

fn describe(version: &VersionInfo) -> String {
    format!(
        "{}:{} ({} file(s), {}, {})",
        version.model,
        version.version,
        version.files,
        gib(version.size_bytes),
        version.digest
    )
}

async fn import(
    client: &Client,
    json: bool,
    path: PathBuf,
    model: &str,
    metrics: Vec<(String, f64)>,
) -> anyhow::Result<()> {
    let mut by_name = BTreeMap::new();
    for (name, value) in metrics {
        if by_name.insert(name.clone(), value).is_some() {
            anyhow::bail!("--metric {name} is given more than once");
        }
    }
    // Flowers reads the path itself, from its own working directory: send it absolute.
    let absolute = std::path::absolute(&path)
        .with_context(|| format!("cannot make {} absolute", path.display()))?;
    let path_text = absolute
        .to_str()
        .with_context(|| format!("{}: the path is not valid UTF-8", absolute.display()))?;
    let registered = client
        .register_version(model, path_text, &by_name, None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&registered)?);
        return Ok(());
    }
    println!(
        "imported {} into {}",
        describe(&registered.version),
        registered.version.path
    );
    if registered.promoted {
        println!("promoted: {}", registered.note);
    } else {
        println!("{}", registered.note);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_a_name_and_a_finite_number() {
        assert_eq!(
            parse_metric("eval_loss=0.31"),
            Ok(("eval_loss".to_string(), 0.31))
        );
        assert_eq!(parse_metric(" acc = 1e-3 "), Ok(("acc".to_string(), 0.001)));
        assert_eq!(
            parse_metric("eval_loss"),
            Err("expected KEY=VALUE (e.g. eval_loss=0.31), got \"eval_loss\"".to_string())
        );
        assert_eq!(
            parse_metric("=1"),
            Err("the metric name before '=' is empty in \"=1\"".to_string())
        );
        assert_eq!(
            parse_metric("loss=low"),
            Err("loss: expected a number, got \"low\"".to_string())
        );
        for bad in ["loss=inf", "loss=NaN", "loss=-infinity"] {
            let error = parse_metric(bad).unwrap_err();
            assert!(error.contains("expected a finite number"), "{bad}: {error}");
        }
    }

    #[test]
    fn policies_read_as_sentences() {
        let metric = |mode: &str| PromoteInfo {
            policy: "metric".into(),
            metric: Some("eval_loss".into()),
            mode: Some(mode.into()),
        };
        assert_eq!(policy(&metric("min")), "when eval_loss is lower");
        assert_eq!(policy(&metric("max")), "when eval_loss is higher");
        let manual = PromoteInfo {
            policy: "manual".into(),
            metric: None,
            mode: None,
        };
        assert_eq!(policy(&manual), "manual");
        assert_eq!(versions_list(&[2, 3]), "2,3");
        assert_eq!(versions_list(&[]), "-");
    }
}
