// Private Azure Container Registry; the apps' identity gets AcrPull, nothing
// else (no admin user, no anonymous pull).
// Seed: "Supporting Azure Services" (Container Registry, Private),
// "Container Security" (private registry) and "Environment Isolation"
// (Basic SKU in development, Premium in production).

param location string

@description('Registry name: 5-50 alphanumerics, globally unique.')
@minLength(5)
@maxLength(50)
param name string

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param sku string = 'Basic'

@description('Principal (object) id that may pull images (the apps\' identity).')
param pullPrincipalId string

@description('Optional principal id that may push images (the CI identity). Empty: none.')
param pushPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param pushPrincipalType string = 'ServicePrincipal'

param tags object = {}

var acrPullRoleId = '7f951dca-d0ab-4f1e-b1d6-61a1e1a88e8c' // AcrPull (built-in)
var acrPushRoleId = '8311e382-0749-4cb8-b61a-304f252e45ec' // AcrPush (built-in)
var isPremium = sku == 'Premium'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139: GitHub-hosted CI pushes and the Container Apps environment (no VNet integration) pulls over the public endpoint; only Entra ID identities with AcrPush/AcrPull can use it (admin user and anonymous pull are off).
  // checkov:skip=CKV_AZURE_163: Image vulnerability scanning is Microsoft Defender for Containers, a subscription-level plan enabled outside this resource group's template.
  // checkov:skip=CKV_AZURE_166: Quarantine blocks every pull until an external scanner releases the image; no such scanner is part of this deployment, so enabling it would stop every rollout.
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    // Premium-only hardening; ignored (and rejected) on Basic/Standard.
    zoneRedundancy: isPremium ? 'Enabled' : 'Disabled'
    dataEndpointEnabled: isPremium
    policies: isPremium ? {
      retentionPolicy: {
        status: 'enabled'
        days: 30
      }
      trustPolicy: {
        type: 'Notary'
        status: 'disabled'
      }
      quarantinePolicy: {
        status: 'disabled'
      }
    } : null
  }
}

resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, pullPrincipalId, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: pullPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource acrPush 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(pushPrincipalId)) {
  name: guid(registry.id, pushPrincipalId, acrPushRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPushRoleId)
    principalId: pushPrincipalId
    principalType: pushPrincipalType
  }
}

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
