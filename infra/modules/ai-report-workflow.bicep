// The AI observability pipeline: a Logic App (Consumption) that every 6 hours
// queries Application Insights for the last 6 hours, asks Azure OpenAI for the
// seed's report JSON and stores it as a timestamped blob in "reports".
// Every hop authenticates with the workflow's system-assigned managed identity;
// the role assignments it needs are declared here.
// Seed: "AI-Powered Observability Pipeline" (Logic App Workflow, Data Sources,
// Output Reports, Deployment: managed identity).

param location string
param name string

@description('Application Insights component name (query target and role scope).')
param appInsightsName string

@description('Application Insights application id (api.applicationinsights.io/v1/apps/{id}/query).')
param appInsightsAppId string

@description('Azure OpenAI account name (role scope).')
param openAiAccountName string

@description('Azure OpenAI endpoint, e.g. https://<name>.openai.azure.com/.')
param openAiEndpoint string

param openAiDeploymentName string

@description('Azure OpenAI data-plane API version for chat completions.')
param openAiApiVersion string = '2024-10-21'

@description('Reports storage account name (role scope).')
param storageAccountName string

param reportsContainerName string = 'reports'

@description('Primary blob endpoint of the reports account, with trailing slash.')
param blobEndpoint string

@description('Log Analytics workspace for the workflow run history.')
param logAnalyticsWorkspaceId string

@description('Analysis interval in hours (seed: 6).')
param intervalHours int = 6

param tags object = {}

var monitoringReaderRoleId = '43d0d8ad-25c7-4714-9337-8ba259a9fe05' // Monitoring Reader
var openAiUserRoleId = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd' // Cognitive Services OpenAI User
var blobContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor

var window = 'PT${intervalHours}H'
var lookback = '${intervalHours}h'

// The role names (cloud_RoleName) of the hosts' telemetry: the
// OpenTelemetry service.name of each component, its Dapr app id
// (docs/observability.md, "Application Insights").
var services = '"productservice", "orderservice"'

// KQL sent to the Application Insights query API, over the tables the
// hosts' OpenTelemetry data lands in (server and consumer spans: requests;
// client and producer spans: dependencies; log records: traces, and
// exceptions for error records naming an exception). Results are capped so
// the prompt stays well inside the model's context window.
// infra/tests/test_telemetry.py checks every table and column named here.
var queries = {
  requestPerformance: 'requests | where timestamp > ago(${lookback}) and cloud_RoleName in (${services}) | summarize requests = count(), failed = countif(success == false), avg_ms = round(avg(duration), 1), p95_ms = round(percentile(duration, 95), 1), p99_ms = round(percentile(duration, 99), 1) by service = cloud_RoleName, operation = name | order by requests desc | take 50'
  failures: 'requests | where timestamp > ago(${lookback}) and cloud_RoleName in (${services}) and success == false | summarize failures = count(), sample_operation_id = any(operation_Id) by service = cloud_RoleName, operation = name, result_code = resultCode | order by failures desc | take 50'
  exceptions: 'exceptions | where timestamp > ago(${lookback}) and cloud_RoleName in (${services}) | summarize occurrences = count(), last_seen = max(timestamp) by service = cloud_RoleName, exception_type = type, message = tostring(outerMessage) | order by occurrences desc | take 30'
  dependencies: 'dependencies | where timestamp > ago(${lookback}) and cloud_RoleName in (${services}) | extend via_dapr = type has "dapr" or name startswith "/v1.0/" or name has "dapr" or target has "dapr" or target endswith ":3500" | summarize calls = count(), failed = countif(success == false), avg_ms = round(avg(duration), 1), p95_ms = round(percentile(duration, 95), 1) by service = cloud_RoleName, via_dapr, dependency_type = type, target, operation = name | order by calls desc | take 60'
  logWarnings: 'traces | where timestamp > ago(${lookback}) and cloud_RoleName in (${services}) and severityLevel >= 2 | summarize lines = count(), sample_operation_id = any(operation_Id) by service = cloud_RoleName, severity = severityLevel, message = tostring(message) | order by lines desc | take 40'
}

var systemPrompt = 'You are a site reliability engineer reviewing telemetry of WasmShop, two services (productservice: product catalog; orderservice: orders, which calls productservice through Dapr service invocation and subscribes to product events through Dapr pub/sub on Redis). Both run as WebAssembly components in a Rust host with a Dapr sidecar on Azure Container Apps. Analyse performance, reliability, errors and Dapr communication (state store, pub/sub, service invocation). Answer with one JSON object and nothing else, exactly in this shape: {"analysis_summary": string, "critical_issues": [string], "recommendations": [{"category": "Performance"|"Reliability"|"Observability"|"DAPR", "severity": "High"|"Medium"|"Low", "service": "productservice"|"orderservice"|"both", "issue": string, "recommendation": string, "expected_impact": string, "implementation_effort": "Low"|"Medium"|"High"}], "metrics_to_track": [string]}. Base every statement on the data; when the data is empty say so in analysis_summary and recommend what telemetry is missing.'

var queryActionNames = {
  requestPerformance: 'Query_request_performance'
  failures: 'Query_failures'
  exceptions: 'Query_exceptions'
  dependencies: 'Query_dependencies'
  logWarnings: 'Query_log_warnings'
}

var userPrompt = 'Telemetry window: the last ${intervalHours} hours, ending @{utcNow()}. Each section is an Application Insights query API result (tables with columns and rows).\n\nRequest performance per service and operation:\n@{body(\'${queryActionNames.requestPerformance}\')}\n\nFailed requests:\n@{body(\'${queryActionNames.failures}\')}\n\nExceptions:\n@{body(\'${queryActionNames.exceptions}\')}\n\nDependency calls (via_dapr marks calls through the Dapr sidecar):\n@{body(\'${queryActionNames.dependencies}\')}\n\nWarning and error log lines (severity 2 warning, 3 error):\n@{body(\'${queryActionNames.logWarnings}\')}'

var appInsightsAuth = {
  type: 'ManagedServiceIdentity'
  audience: 'https://api.applicationinsights.io'
}
var queryUri = 'https://api.applicationinsights.io/v1/apps/${appInsightsAppId}/query'
var retry = {
  type: 'exponential'
  count: 3
  interval: 'PT15S'
}

resource workflow 'Microsoft.Logic/workflows@2019-05-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    state: 'Enabled'
    definition: {
      '$schema': 'https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#'
      contentVersion: '1.0.0.0'
      parameters: {}
      triggers: {
        Every_interval_hours: {
          type: 'Recurrence'
          recurrence: {
            frequency: 'Hour'
            interval: intervalHours
          }
        }
      }
      actions: {
        Query_request_performance: {
          type: 'Http'
          runAfter: {}
          inputs: {
            method: 'POST'
            uri: queryUri
            headers: {
              'Content-Type': 'application/json'
            }
            body: {
              query: queries.requestPerformance
              timespan: window
            }
            authentication: appInsightsAuth
            retryPolicy: retry
          }
        }
        Query_failures: {
          type: 'Http'
          runAfter: {}
          inputs: {
            method: 'POST'
            uri: queryUri
            headers: {
              'Content-Type': 'application/json'
            }
            body: {
              query: queries.failures
              timespan: window
            }
            authentication: appInsightsAuth
            retryPolicy: retry
          }
        }
        Query_exceptions: {
          type: 'Http'
          runAfter: {}
          inputs: {
            method: 'POST'
            uri: queryUri
            headers: {
              'Content-Type': 'application/json'
            }
            body: {
              query: queries.exceptions
              timespan: window
            }
            authentication: appInsightsAuth
            retryPolicy: retry
          }
        }
        Query_dependencies: {
          type: 'Http'
          runAfter: {}
          inputs: {
            method: 'POST'
            uri: queryUri
            headers: {
              'Content-Type': 'application/json'
            }
            body: {
              query: queries.dependencies
              timespan: window
            }
            authentication: appInsightsAuth
            retryPolicy: retry
          }
        }
        Query_log_warnings: {
          type: 'Http'
          runAfter: {}
          inputs: {
            method: 'POST'
            uri: queryUri
            headers: {
              'Content-Type': 'application/json'
            }
            body: {
              query: queries.logWarnings
              timespan: window
            }
            authentication: appInsightsAuth
            retryPolicy: retry
          }
        }
        Analyze_with_Azure_OpenAI: {
          type: 'Http'
          runAfter: {
            Query_request_performance: [
              'Succeeded'
            ]
            Query_failures: [
              'Succeeded'
            ]
            Query_exceptions: [
              'Succeeded'
            ]
            Query_dependencies: [
              'Succeeded'
            ]
            Query_log_warnings: [
              'Succeeded'
            ]
          }
          inputs: {
            method: 'POST'
            uri: '${openAiEndpoint}openai/deployments/${openAiDeploymentName}/chat/completions?api-version=${openAiApiVersion}'
            headers: {
              'Content-Type': 'application/json'
            }
            body: {
              messages: [
                {
                  role: 'system'
                  content: systemPrompt
                }
                {
                  role: 'user'
                  content: userPrompt
                }
              ]
              temperature: json('0.2')
              max_tokens: 3000
              response_format: {
                type: 'json_object'
              }
            }
            authentication: {
              type: 'ManagedServiceIdentity'
              audience: 'https://cognitiveservices.azure.com'
            }
            retryPolicy: retry
          }
        }
        Write_report_blob: {
          type: 'Http'
          runAfter: {
            Analyze_with_Azure_OpenAI: [
              'Succeeded'
            ]
          }
          inputs: {
            method: 'PUT'
            // e.g. reports/2025/01/31/wasmshop-ai-report-2025-01-31-060000Z.json
            uri: '${blobEndpoint}${reportsContainerName}/@{formatDateTime(utcNow(), \'yyyy\')}/@{formatDateTime(utcNow(), \'MM\')}/@{formatDateTime(utcNow(), \'dd\')}/wasmshop-ai-report-@{formatDateTime(utcNow(), \'yyyy-MM-dd-HHmmss\')}Z.json'
            headers: {
              'x-ms-blob-type': 'BlockBlob'
              'x-ms-version': '2023-11-03'
              'x-ms-blob-content-type': 'application/json'
              'x-ms-meta-window': window
              'x-ms-meta-model': openAiDeploymentName
              'Content-Type': 'application/json'
            }
            // The model's answer (response_format json_object) parsed, so an
            // invalid answer fails the run visibly instead of storing junk.
            body: '@json(body(\'Analyze_with_Azure_OpenAI\')?[\'choices\'][0][\'message\'][\'content\'])'
            authentication: {
              type: 'ManagedServiceIdentity'
              audience: 'https://storage.azure.com/'
            }
            retryPolicy: retry
          }
        }
      }
      outputs: {}
    }
  }
}

// Run history to Log Analytics (seed: "Built-in Logic App execution tracking").
resource workflowDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: workflow
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource container 'containers' existing = {
      name: reportsContainerName
    }
  }
}

resource readTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, workflow.id, monitoringReaderRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringReaderRoleId)
    principalId: workflow.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource callOpenAi 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(openAi.id, workflow.id, openAiUserRoleId)
  scope: openAi
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', openAiUserRoleId)
    principalId: workflow.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource writeReports 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage::blobService::container.id, workflow.id, blobContributorRoleId)
  scope: storage::blobService::container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobContributorRoleId)
    principalId: workflow.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output id string = workflow.id
output name string = workflow.name
output principalId string = workflow.identity.principalId
