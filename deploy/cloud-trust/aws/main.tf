# AWS trusts Ferry's issuer: an IAM OIDC identity provider for Ferry's public URL and a
# role that Ferry-signed tokens may assume with AssumeRoleWithWebIdentity.
#   terraform init && terraform apply -var ferry_url=https://ferry.example.com

variable "ferry_url" {
  description = "Ferry's server.public_url (https, reachable by AWS)"
  type        = string
}

variable "subjects" {
  description = "Canonical subjects (Ferry mapping output) allowed to assume the role"
  type        = list(string)
  default     = ["github:acme/infra:refs/heads/main"]
}

data "tls_certificate" "ferry" {
  url = "${var.ferry_url}/.well-known/openid-configuration"
}

resource "aws_iam_openid_connect_provider" "ferry" {
  url             = var.ferry_url
  client_id_list  = ["sts.amazonaws.com"] # Ferry's `web_identity_audience` (default)
  thumbprint_list = [data.tls_certificate.ferry.certificates[0].sha1_fingerprint]
}

locals {
  host = replace(var.ferry_url, "https://", "")
}

resource "aws_iam_role" "deploy" {
  name                 = "deploy"
  max_session_duration = 3600 * 12
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = aws_iam_openid_connect_provider.ferry.arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = { "${local.host}:aud" = "sts.amazonaws.com" }
        StringLike   = { "${local.host}:sub" = var.subjects }
      }
    }]
  })
}

# For `mode = "assume_role"` instead: Ferry's own principal may assume the role with an
# external id, and may set session tags and a source identity.
# resource "aws_iam_role" "deploy_via_ferry" {
#   name = "deploy-via-ferry"
#   assume_role_policy = jsonencode({
#     Version = "2012-10-17"
#     Statement = [{
#       Effect    = "Allow"
#       Principal = { AWS = "arn:aws:iam::111111111111:role/ferry" }
#       Action    = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
#       Condition = { StringEquals = { "sts:ExternalId" = "ferry-external-1" } }
#     }]
#   })
# }

output "role_arn" {
  value = aws_iam_role.deploy.arn
}
