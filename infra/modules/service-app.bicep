// One WasmShop service: the shared image running one component under a Dapr
// sidecar. Used for productservice and orderservice.
// Seed: "Dapr Deployment Configuration / Service Configuration", "Resource
// Distribution" (replicas, CPU, memory), "Scaling Strategies" (HTTP rule at
// 50 concurrent requests), "Resilience" (health checks), "Security" (HTTPS
// only, private registry, managed identity).

param location string

@description('Container app name; also the Dapr app id.')
param name string

@description('Component of spin.toml this app runs (WASMSHOP_COMPONENT_ID).')
@allowed([
  'product'
  'order'
])
param componentId string

param environmentId string

@description('User-assigned identity resource id (AcrPull).')
param identityId string

@description('Registry login server, e.g. myacr.azurecr.io.')
param registryServer string

@description('Full image reference.')
param image string

param cpu string
param memory string

@minValue(0)
@maxValue(300)
param minReplicas int

@minValue(1)
@maxValue(300)
param maxReplicas int

@description('Concurrent HTTP requests per replica before scaling out (seed: 50).')
param concurrentRequests int = 50

@description('Log filter for the host (RUST_LOG).')
param logLevel string = 'info'

param tags object = {}

var port = 8080

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: union(tags, {
    'wasmshop-component': componentId
  })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: port
        transport: 'http'
        allowInsecure: false
        traffic: [
          {
            latestRevision: true
            weight: 100
          }
        ]
      }
      // Only the fields Container Apps supports (reference: enabled, appId,
      // appPort, appProtocol, httpMaxRequestSize, httpReadBufferSize,
      // enableApiLogging, logLevel); no API token on ACA: the host and its
      // sidecar talk over localhost inside the replica.
      dapr: {
        enabled: true
        appId: name
        appPort: port
        appProtocol: 'http'
        enableApiLogging: true
        logLevel: 'info'
      }
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: name
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: [
            {
              name: 'WASMSHOP_COMPONENT_ID'
              value: componentId
            }
            {
              name: 'DAPR_HTTP_PORT'
              value: '3500'
            }
            {
              name: 'RUST_LOG'
              value: logLevel
            }
            {
              // The environment's OpenTelemetry agent takes traces and logs
              // only (container-apps-environment.bicep); metrics stay on /metrics.
              name: 'OTEL_METRICS_EXPORTER'
              value: 'none'
            }
          ]
          probes: [
            {
              // Compiling the components on a cold start can take a while.
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: port
              }
              periodSeconds: 2
              failureThreshold: 30
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: port
              }
              periodSeconds: 10
              failureThreshold: 3
            }
            {
              // /readyz turns ready once the sidecar answers /v1.0/healthz/outbound.
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: port
              }
              periodSeconds: 5
              failureThreshold: 3
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: string(concurrentRequests)
              }
            }
          }
        ]
      }
    }
  }
}

output name string = app.name
output fqdn string = app.properties.configuration.ingress.fqdn
output url string = 'https://${app.properties.configuration.ingress.fqdn}'
output latestRevisionName string = app.properties.latestRevisionName
