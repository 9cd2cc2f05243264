// Azure OpenAI account and the chat model deployment the report workflow calls.
// Keys are disabled: callers authenticate with Entra ID (the Logic App's
// managed identity holds "Cognitive Services OpenAI User").
// Seed: "AI-Powered Observability Pipeline" (AI Analysis: Azure OpenAI). The
// seed's GPT-3.5-turbo is retired; the default is gpt-4o-mini, a parameter.

param location string

@description('Account name; also its custom subdomain (<name>.openai.azure.com).')
param name string

param deploymentName string = 'report-analyst'
param modelName string = 'gpt-4o-mini'
param modelVersion string = '2024-07-18'

@allowed([
  'Standard'
  'GlobalStandard'
  'DataZoneStandard'
])
param deploymentSku string = 'GlobalStandard'

@description('Capacity in thousands of tokens per minute.')
@minValue(1)
param capacity int = 10

param tags object = {}

resource account 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_134: Called by a Logic App (Consumption), which runs on shared multi-tenant infrastructure without VNet integration; the public endpoint is required and only Entra ID callers with an RBAC role get in (local auth disabled).
  name: name
  location: location
  tags: tags
  kind: 'OpenAI'
  sku: {
    name: 'S0'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    restrictOutboundNetworkAccess: true
    allowedFqdnList: []
    networkAcls: {
      defaultAction: 'Allow'
    }
  }
}

resource modelDeployment 'Microsoft.CognitiveServices/accounts/deployments@2024-10-01' = {
  parent: account
  name: deploymentName
  sku: {
    name: deploymentSku
    capacity: capacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
    versionUpgradeOption: 'OnceCurrentVersionExpired'
  }
}

output id string = account.id
output name string = account.name
output endpoint string = account.properties.endpoint
output deploymentName string = modelDeployment.name
