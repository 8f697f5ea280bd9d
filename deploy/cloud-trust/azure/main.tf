# Azure trusts Ferry's issuer: an app registration with a federated identity credential
# for Ferry's public URL and one canonical subject, and a role assignment for it.
#   terraform init && terraform apply -var ferry_url=https://ferry.example.com

variable "ferry_url" {
  description = "Ferry's server.public_url (https, reachable by Entra)"
  type        = string
}
variable "subject" {
  description = "The canonical subject (Ferry mapping output) this credential trusts"
  type        = string
  default     = "github:acme/infra:refs/heads/main"
}
variable "scope_id" {
  description = "The resource (e.g. a subscription or resource group id) the app may manage"
  type        = string
}

resource "azuread_application" "deploy" {
  display_name = "deploy-via-ferry"
}

resource "azuread_service_principal" "deploy" {
  client_id = azuread_application.deploy.client_id
}

resource "azuread_application_federated_identity_credential" "ferry" {
  application_id = azuread_application.deploy.id
  display_name   = "ferry"
  issuer         = var.ferry_url
  subject        = var.subject
  audiences      = ["api://AzureADTokenExchange"] # what Ferry puts in `aud`
}

resource "azurerm_role_assignment" "deploy" {
  scope                = var.scope_id
  role_definition_name = "Contributor"
  principal_id         = azuread_service_principal.deploy.object_id
}

output "client_id" {
  value = azuread_application.deploy.client_id
}
