# GCP trusts Ferry's issuer: a workload identity pool + OIDC provider for Ferry's public
# URL, and (optionally) a service account Ferry-federated identities may impersonate.
#   terraform init && terraform apply -var project=acme-prod -var ferry_url=https://ferry.example.com

variable "project" { type = string }
variable "ferry_url" {
  description = "Ferry's server.public_url (https, reachable by Google)"
  type        = string
}
variable "subject" {
  description = "A canonical subject (Ferry mapping output) allowed to impersonate the service account; keep it under 127 bytes"
  type        = string
  default     = "github:acme/infra:refs/heads/main"
}

data "google_project" "this" { project_id = var.project }

resource "google_iam_workload_identity_pool" "ci" {
  project                   = var.project
  workload_identity_pool_id = "ci"
  display_name              = "Ferry-federated workloads"
}

resource "google_iam_workload_identity_pool_provider" "ferry" {
  project                            = var.project
  workload_identity_pool_id          = google_iam_workload_identity_pool.ci.workload_identity_pool_id
  workload_identity_pool_provider_id = "ferry"
  oidc {
    issuer_uri = var.ferry_url
    # Default allowed audience: https://iam.googleapis.com/<provider resource>, which is
    # what Ferry puts in `aud` unless the target sets `jwt_audience`.
  }
  attribute_mapping = {
    "google.subject"       = "assertion.sub"
    "attribute.issuer"     = "assertion.ferry.issuer"
    "attribute.repository" = "assertion.ferry.attributes.repository"
  }
  attribute_condition = "assertion.ferry.issuer == 'github'"
}

resource "google_service_account" "deployer" {
  project      = var.project
  account_id   = "deployer"
  display_name = "Deploys from CI via Ferry"
}

resource "google_service_account_iam_member" "ferry_impersonation" {
  service_account_id = google_service_account.deployer.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/${data.google_project.this.number}/locations/global/workloadIdentityPools/ci/subject/${var.subject}"
}

output "workload_identity_provider" {
  value = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.ferry.name}"
}
output "service_account" {
  value = google_service_account.deployer.email
}
