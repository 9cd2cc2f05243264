// Container Apps environment with Dapr, plus the environment-level Dapr
// components every service shares.
// Components: 1. statestore, 2. product-pubsub on Redis (docs/deployment.md).
// Facts: docs/azure-container-apps.md (simplified component schema,
// scopes = app ids, azureClientId required with a user-assigned identity).

param location string
param name string

@description('Log Analytics workspace receiving the environment\'s console and system logs (diagnostic settings, no shared key).')
param logAnalyticsWorkspaceId string

@description('Application Insights connection string: Dapr sidecar telemetry (seed: daprAIConnectionString) and the managed OpenTelemetry agent\'s destination for the hosts\' traces and logs.')
param appInsightsConnectionString string

@description('host:port of the Redis container app inside the environment.')
param redisHost string

@description('Key Vault holding the secret "redis-password".')
param keyVaultName string

@description('Client id of the user-assigned identity the Dapr-enabled apps run with (reads Key Vault).')
param identityClientId string

@description('Dapr app ids allowed to load the components (component scopes).')
param daprAppIds array

param tags object = {}

// The managed OpenTelemetry agent (openTelemetryConfiguration, preview API
// only; docs/observability.md, "Azure"): the environment injects
// OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_PROTOCOL=grpc into every
// app, and the agent forwards the hosts' spans and log records to
// Application Insights (requests, dependencies, traces, exceptions). Its
// Application Insights destination takes no metrics; those stay on
// Prometheus, and service-app.bicep sets OTEL_METRICS_EXPORTER=none.
resource environment 'Microsoft.App/managedEnvironments@2024-10-02-preview' = {
  name: name
  location: location
  tags: tags
  properties: {
    // Dapr sidecars export traces/metrics to Application Insights.
    daprAIConnectionString: appInsightsConnectionString
    appInsightsConfiguration: {
      connectionString: appInsightsConnectionString
    }
    openTelemetryConfiguration: {
      tracesConfiguration: {
        destinations: [
          'appInsights'
        ]
      }
      logsConfiguration: {
        destinations: [
          'appInsights'
        ]
      }
    }
    // Logs flow through Azure Monitor diagnostic settings (below) instead of
    // the seed's log-analytics destination, which needs the workspace key.
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: environment
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

// Dapr secret store backed by Key Vault, read with the apps' managed identity:
// the Redis password never appears in a component definition.
resource secretStore 'Microsoft.App/managedEnvironments/daprComponents@2025-01-01' = {
  parent: environment
  name: 'secretstore'
  properties: {
    componentType: 'secretstores.azure.keyvault'
    version: 'v1'
    metadata: [
      {
        name: 'vaultName'
        value: keyVaultName
      }
      {
        name: 'azureEnvironment'
        value: 'AZUREPUBLICCLOUD'
      }
      {
        name: 'azureClientId'
        value: identityClientId
      }
    ]
    scopes: daprAppIds
  }
}

// Seed "1. State Store Component (Redis)".
resource stateStore 'Microsoft.App/managedEnvironments/daprComponents@2025-01-01' = {
  parent: environment
  name: 'statestore'
  properties: {
    componentType: 'state.redis'
    version: 'v1'
    secretStoreComponent: secretStore.name
    metadata: [
      {
        name: 'redisHost'
        value: redisHost
      }
      {
        name: 'redisPassword'
        secretRef: 'redis-password'
      }
      {
        name: 'enableTLS'
        value: 'false'
      }
      {
        name: 'maxRetries'
        value: '3'
      }
      {
        name: 'maxRetryBackoff'
        value: '2s'
      }
    ]
    scopes: daprAppIds
  }
}

// Seed "2. Pub/Sub Component (Redis)".
resource pubSub 'Microsoft.App/managedEnvironments/daprComponents@2025-01-01' = {
  parent: environment
  name: 'product-pubsub'
  properties: {
    componentType: 'pubsub.redis'
    version: 'v1'
    secretStoreComponent: secretStore.name
    metadata: [
      {
        name: 'redisHost'
        value: redisHost
      }
      {
        name: 'redisPassword'
        secretRef: 'redis-password'
      }
      {
        name: 'enableTLS'
        value: 'false'
      }
      {
        name: 'processingTimeout'
        value: '15s'
      }
      {
        name: 'redeliverInterval'
        value: '30s'
      }
      {
        // Seed uses 1000; that trims events a stopped subscriber has not read.
        name: 'maxLenApprox'
        value: '100000'
      }
    ]
    scopes: daprAppIds
  }
}

// Component resiliency (preview API): retries and timeouts for publishing and,
// crucially, for deliveries: without an inbound retry policy daprd does not
// redeliver an event the subscriber answered RETRY (reference: dapr-http-api.md).
// Seed "Resilience" (retry policies, circuit breaker).
resource pubSubResiliency 'Microsoft.App/managedEnvironments/daprComponents/resiliencyPolicies@2024-10-02-preview' = {
  parent: pubSub
  name: 'product-pubsub-resiliency'
  properties: {
    outboundPolicy: {
      timeoutPolicy: {
        responseTimeoutInSeconds: 5
      }
      httpRetryPolicy: {
        maxRetries: 5
        retryBackOff: {
          initialDelayInMilliseconds: 500
          maxIntervalInMilliseconds: 5000
        }
      }
      circuitBreakerPolicy: {
        consecutiveErrors: 10
        intervalInSeconds: 30
        timeoutInSeconds: 60
      }
    }
    inboundPolicy: {
      timeoutPolicy: {
        responseTimeoutInSeconds: 30
      }
      httpRetryPolicy: {
        maxRetries: 10
        retryBackOff: {
          initialDelayInMilliseconds: 500
          maxIntervalInMilliseconds: 30000
        }
      }
      circuitBreakerPolicy: {
        consecutiveErrors: 10
        intervalInSeconds: 30
        timeoutInSeconds: 60
      }
    }
  }
}

output id string = environment.id
output name string = environment.name
output defaultDomain string = environment.properties.defaultDomain
output stateStoreName string = stateStore.name
output pubSubName string = pubSub.name
