// WasmShop on Azure Container Apps (docs/deployment.md describes what it
// deploys and why; docs/azure-container-apps.md the platform facts), with the
// services running as WebAssembly components under the wasmshop host.
//
// Deploy with infra/deploy.sh (see docs/deployment.md); parameter files:
// infra/parameters/dev.bicepparam and prod.bicepparam.

targetScope = 'resourceGroup'

@description('Environment: selects names and sizes (seed: "Multi-Environment Strategy").')
@allowed([
  'dev'
  'prod'
])
param environmentName string

param location string = resourceGroup().location

@description('Prefix of every resource name.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'wasmshop'

@description('Tag of the wasmshop image in the environment\'s registry.')
param imageTag string = 'latest'

@description('false on a first pass, before any image exists in the new registry: everything but the two service apps is created.')
param deployApps bool = true

// Seed "Resource Distribution": services 0.5 CPU/1Gi with 1-3 replicas in dev,
// 1.0 CPU/2Gi with 2-20 replicas in prod; Redis 0.25/0.5Gi dev, 0.5/1Gi prod.
param serviceCpu string
param serviceMemory string
param serviceMinReplicas int
param serviceMaxReplicas int
param redisCpu string
param redisMemory string

@description('Redis maxmemory (below the container memory).')
param redisMaxMemory string

@description('Registry SKU (seed "Environment Isolation": Basic in dev, Premium in prod).')
param registrySku string = 'Basic'

param logRetentionDays int = 30

@secure()
@description('Redis AUTH password; stored in Key Vault and referenced from there. infra/deploy.sh reuses the stored value.')
param redisPassword string

@description('Object id of the deploying identity (CI); gets AcrPush and Key Vault Secrets Officer. Empty: none.')
param deployerPrincipalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'ServicePrincipal'

@description('Region of the Azure OpenAI account (model availability differs per region).')
param openAiLocation string = location
param openAiModelName string = 'gpt-4o-mini'
param openAiModelVersion string = '2024-07-18'
param openAiDeploymentSku string = 'GlobalStandard'
param openAiCapacity int = 10

@description('Public IPs/CIDRs of operators allowed to read reports from Blob Storage.')
param reportReaderIpRules array = []

param tags object = {}

var suffix = uniqueString(resourceGroup().id)
var base = '${namePrefix}-${environmentName}'
var allTags = union(tags, {
  application: 'wasmshop'
  environment: environmentName
})
var daprAppIds = [
  'productservice'
  'orderservice'
]
var names = {
  logAnalytics: 'log-${base}'
  appInsights: 'appi-${base}'
  identity: 'id-${base}-apps'
  registry: take('cr${namePrefix}${environmentName}${suffix}', 50)
  keyVault: take('kv${environmentName}${suffix}', 24)
  environment: 'cae-${base}'
  redis: 'redis'
  redisStorage: take('stredis${suffix}', 24)
  reportsStorage: take('streports${suffix}', 24)
  openAi: 'oai-${base}-${suffix}'
  workflow: 'logic-${base}-ai-reports'
}

// Seed "Supporting Azure Services": Log Analytics + Application Insights.
module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
    retentionInDays: logRetentionDays
    tags: allTags
  }
}

// Seed "Security Architecture / Identity": one user-assigned identity for the apps.
module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    location: location
    name: names.identity
    tags: allTags
  }
}

// Seed "Container Registry (Private)".
module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    name: names.registry
    sku: registrySku
    pullPrincipalId: identity.outputs.principalId
    pushPrincipalId: deployerPrincipalId
    pushPrincipalType: deployerPrincipalType
    tags: allTags
  }
}

// Seed "Configuration Management" (Key Vault) / "Secrets management".
module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    name: names.keyVault
    redisPassword: redisPassword
    readerPrincipalId: identity.outputs.principalId
    deployerPrincipalId: deployerPrincipalId
    deployerPrincipalType: deployerPrincipalType
    tags: allTags
  }
}

// Seed "Container Apps Environment (Dapr-enabled)" + Dapr components.
module environment 'modules/container-apps-environment.bicep' = {
  name: 'container-apps-environment'
  params: {
    location: location
    name: names.environment
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    redisHost: '${names.redis}:6379'
    keyVaultName: keyVault.outputs.name
    identityClientId: identity.outputs.clientId
    daprAppIds: daprAppIds
    tags: allTags
  }
}

// Seed "Redis Container".
module redis 'modules/redis.bicep' = {
  name: 'redis'
  params: {
    location: location
    name: names.redis
    environmentName: environment.outputs.name
    storageAccountName: names.redisStorage
    identityId: identity.outputs.id
    redisPasswordSecretUri: keyVault.outputs.redisPasswordSecretUri
    cpu: redisCpu
    memory: redisMemory
    maxMemory: redisMaxMemory
    tags: allTags
  }
}

var image = '${registry.outputs.loginServer}/wasmshop:${imageTag}'

// Service invocation resiliency: Container Apps' app resiliency policies do
// not apply to Dapr service invocation and ACA does not load Dapr Resiliency
// specs, so on ACA the order -> product path relies on Dapr's built-in
// invocation retries; infra/dapr/resiliency.yaml configures it for `dapr run`.
// Pub/sub resiliency is set on the component (container-apps-environment.bicep).

// Seed "ProductService" / "OrderService" container apps.
module productService 'modules/service-app.bicep' = if (deployApps) {
  name: 'productservice'
  dependsOn: [
    redis
  ]
  params: {
    location: location
    name: daprAppIds[0]
    componentId: 'product'
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    image: image
    cpu: serviceCpu
    memory: serviceMemory
    minReplicas: serviceMinReplicas
    maxReplicas: serviceMaxReplicas
    tags: allTags
  }
}

module orderService 'modules/service-app.bicep' = if (deployApps) {
  name: 'orderservice'
  dependsOn: [
    redis
  ]
  params: {
    location: location
    name: daprAppIds[1]
    componentId: 'order'
    environmentId: environment.outputs.id
    identityId: identity.outputs.id
    registryServer: registry.outputs.loginServer
    image: image
    cpu: serviceCpu
    memory: serviceMemory
    minReplicas: serviceMinReplicas
    maxReplicas: serviceMaxReplicas
    tags: allTags
  }
}

// Seed "AI-Powered Observability Pipeline": Storage, Azure OpenAI, Logic App.
module reportsStorage 'modules/reports-storage.bicep' = {
  name: 'reports-storage'
  params: {
    location: location
    name: names.reportsStorage
    writerWorkflowId: resourceId('Microsoft.Logic/workflows', names.workflow)
    readerIpRules: reportReaderIpRules
    tags: allTags
  }
}

module openAi 'modules/openai.bicep' = {
  name: 'openai'
  params: {
    location: openAiLocation
    name: names.openAi
    modelName: openAiModelName
    modelVersion: openAiModelVersion
    deploymentSku: openAiDeploymentSku
    capacity: openAiCapacity
    tags: allTags
  }
}

module aiReports 'modules/ai-report-workflow.bicep' = {
  name: 'ai-report-workflow'
  params: {
    location: location
    name: names.workflow
    appInsightsName: monitoring.outputs.appInsightsName
    appInsightsAppId: monitoring.outputs.appInsightsAppId
    openAiAccountName: openAi.outputs.name
    openAiEndpoint: openAi.outputs.endpoint
    openAiDeploymentName: openAi.outputs.deploymentName
    storageAccountName: reportsStorage.outputs.name
    reportsContainerName: reportsStorage.outputs.containerName
    blobEndpoint: reportsStorage.outputs.blobEndpoint
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsId
    tags: allTags
  }
}

output productServiceUrl string = deployApps ? productService.outputs.url : ''
output orderServiceUrl string = deployApps ? orderService.outputs.url : ''
output registryName string = registry.outputs.name
output registryLoginServer string = registry.outputs.loginServer
output image string = image
output containerAppsEnvironmentName string = environment.outputs.name
output keyVaultName string = keyVault.outputs.name
output appInsightsName string = monitoring.outputs.appInsightsName
output logAnalyticsWorkspaceName string = monitoring.outputs.logAnalyticsName
output reportsStorageAccountName string = reportsStorage.outputs.name
output reportsContainerName string = reportsStorage.outputs.containerName
output aiReportWorkflowName string = aiReports.outputs.name
output openAiEndpoint string = openAi.outputs.endpoint
