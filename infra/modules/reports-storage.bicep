// Blob storage for the AI observability reports: account + "reports" container.
// Entra ID only (shared keys off); the Logic App writes with its managed
// identity, admitted through the firewall by a resource instance rule.
// Seed: "AI-Powered Observability Pipeline" (Storage: saves reports to Azure
// Blob Storage) and "Compliance" (encryption at rest, data residency).

param location string

@minLength(3)
@maxLength(24)
param name string

@description('Resource id of the Logic App allowed through the storage firewall.')
param writerWorkflowId string

@description('Public IPv4 addresses or CIDR ranges allowed to read reports (operators). Empty: Azure services and the Logic App only.')
param readerIpRules array = []

@description('Days to keep reports before lifecycle management deletes them.')
param retentionDays int = 365

param tags object = {}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206: Reports are regenerated every 6 hours from Application Insights; zone-redundant storage (ZRS) is enough, geo-replication adds cost without a recovery need.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    // Public endpoint behind a deny-by-default firewall: only the Logic App
    // (resource instance rule / trusted service) and the listed operator IPs.
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      resourceAccessRules: [
        {
          tenantId: subscription().tenantId
          resourceId: writerWorkflowId
        }
      ]
      ipRules: [for ip in readerIpRules: {
        value: ip
        action: 'Allow'
      }]
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 30
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 30
    }
  }
}

resource reports 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'reports'
  properties: {
    publicAccess: 'None'
  }
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-old-reports'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                'reports/'
              ]
            }
            actions: {
              baseBlob: {
                tierToCool: {
                  daysAfterModificationGreaterThan: 30
                }
                delete: {
                  daysAfterModificationGreaterThan: retentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

output id string = storage.id
output name string = storage.name
output containerName string = reports.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
