// Key Vault holding the Redis password. Container Apps and Dapr components
// reference the secret by URL with the apps' managed identity, so the value
// never appears in app or component definitions.
// Seed: "Configuration Management" (Azure Key Vault integration) and
// "Security" (secrets management).

param location string

@description('Vault name: 3-24 alphanumerics and hyphens, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@secure()
@description('Password the Redis container app requires (AUTH).')
param redisPassword string

@description('Principal id of the apps\' identity; gets Key Vault Secrets User.')
param readerPrincipalId string

@description('Optional principal id of the deploying identity (CI); gets Key Vault Secrets Officer so infra/deploy.sh can read the existing password instead of rotating it. Empty: none.')
param deployerPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'ServicePrincipal'

param tags object = {}

var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
var secretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7' // Key Vault Secrets Officer

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: The vault must stay reachable over its public endpoint: Container Apps (no VNet integration here) resolve Key Vault references from outside any VNet, and the CI runner reads the secret; access is RBAC-only with no access policies.
  // checkov:skip=CKV_AZURE_189: Same reason as CKV_AZURE_109: public endpoint needed by Container Apps secret references and CI; RBAC authorization guards every read.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource redisPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: The password is rotated by redeploying with a new value (see docs/deployment.md); an expiry date would make Container Apps fail to resolve the reference on a date nobody chose.
  parent: vault
  name: 'redis-password'
  properties: {
    value: redisPassword
    contentType: 'text/plain; purpose=redis-requirepass'
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, readerPrincipalId, secretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource secretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, secretsOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsOfficerRoleId)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

output id string = vault.id
output name string = vault.name
@description('Versionless secret URI: Container Apps pick up a rotated value without a template change.')
output redisPasswordSecretUri string = '${vault.properties.vaultUri}secrets/${redisPasswordSecret.name}'
