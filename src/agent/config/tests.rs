use super::*;

fn parse(text: &str) -> Result<AgentConfig, String> {
    AgentConfig::parse("agent.toml", text, Path::new("/etc/ferry")).map_err(|e| e.to_string())
}

const GOOD: &str = r#"
ferry_url = "https://ferry.example.com"
token_file = "token"
secret_file = "/run/agent/secret"

[aws]
target = "aws-deploy"
paths = { "/aws/readonly" = "aws-readonly" }

[gcp]
target = "gcp-deploy"
email = "deployer@acme.iam.gserviceaccount.com"
project_id = "acme"
project_number = 123456

[azure]
resources = { "https://management.azure.com/" = "azure-deploy" }
"#;

#[test]
fn a_full_config_reads_with_its_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.endpoint.as_str(),
        "https://ferry.example.com/oauth2/token"
    );
    assert_eq!(c.listen.to_string(), "127.0.0.1:8990");
    assert!(matches!(&c.subject, Subject::File(p) if p == Path::new("/etc/ferry/token")));
    assert_eq!(c.aws["/aws/credentials"], "aws-deploy");
    assert_eq!(c.aws["/aws/readonly"], "aws-readonly");
    let g = c.gcp.unwrap();
    assert_eq!(g.scopes, [CLOUD_PLATFORM]);
    let a = c.azure.unwrap();
    assert_eq!(a.resources["https://management.azure.com"], "azure-deploy");
    assert_eq!(a.path, "/azure/identity");
    assert_eq!(c.timeout, Duration::from_secs(10));
}

#[test]
fn every_problem_is_reported_at_once_by_entry() {
    let err = parse(
        r#"
ferry_url = "http://ferry.example.com"
listen = "0.0.0.0:8990"
token_file = "t"
token_env = "T"
audience = "x"
unknown_key = 1

[aws]
path = "/healthz"

[gcp]
email = "nobody"

[azure]
resources = { "not a uri" = "t" }
"#,
    )
    .unwrap_err();
    for expected in [
        "agent.toml: unknown_key: unknown key (line 7)",
        "agent.toml: ferry_url: the URL `http://ferry.example.com`: plain http would send the token in the clear",
        "agent.toml: listen: `0.0.0.0:8990` is not a loopback address",
        "agent.toml: token_file: give one of token_file, token_env and token_source",
        "agent.toml: audience: is the audience of a token_source's token",
        "agent.toml: aws.path: is the path of aws.target, which is not set",
        "agent.toml: aws: names no target",
        "agent.toml: gcp.target: is required",
        "agent.toml: gcp.project_id: is required",
        "agent.toml: gcp.email: `nobody` is not a service account email",
        "agent.toml: azure.resources.\"not a uri\": is not a resource URI",
        "agent.toml: secret_file: is required with [aws] or [azure]",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn paths_may_not_collide_or_take_the_agents_own() {
    let err = parse(
        r#"
ferry_url = "https://f"
token_env = "T"
secret_file = "s"
[aws]
target = "a"
path = "/x"
paths = { "/computeMetadata/v1/x" = "b", "relative" = "c" }
[azure]
path = "/x"
resources = { "https://vault.azure.net" = "v", "https://vault.azure.net/" = "w" }
"#,
    )
    .unwrap_err();
    assert!(err.contains("aws.paths.\"/computeMetadata/v1/x\": `/computeMetadata/v1/x` is one of the agent's own paths"), "{err}");
    assert!(
        err.contains("aws.paths.\"relative\": `relative` is not an absolute URL path"),
        "{err}"
    );
    assert!(err.contains("azure.path: `/x` is already served"), "{err}");
    assert!(err.contains("names a resource already mapped"), "{err}");
}

#[test]
fn a_remote_listener_needs_saying_so_and_nothing_served_is_an_error() {
    let ok = parse(
        "ferry_url = \"http://127.0.0.1:8080\"\ntoken_source = \"github-actions\"\naudience = \"ferry\"\nlisten = \"169.254.170.23:80\"\nallow_remote = true\n[gcp]\ntarget = \"g\"\nemail = \"a@b\"\nproject_id = \"p\"\n",
    )
    .unwrap();
    assert!(matches!(ok.subject, Subject::Ci { audience: Some(ref a), .. } if a == "ferry"));
    let err = parse("ferry_url = \"https://f\"\ntoken_env = \"T\"\n").unwrap_err();
    assert!(err.contains("agent.toml: file: serves nothing"), "{err}");
    let err = parse("ferry_url = \"https://f\"\n").unwrap_err();
    assert!(err.contains("token_file: the workload's token"), "{err}");
}

#[test]
fn resources_compare_without_default_suffix_or_slash() {
    assert_eq!(
        normalise_resource("https://management.azure.com/.default"),
        "https://management.azure.com"
    );
    assert_eq!(
        normalise_resource("https://management.azure.com/"),
        "https://management.azure.com"
    );
    assert_eq!(normalise_resource("api://x"), "api://x");
}
