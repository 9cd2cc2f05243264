// Redis as an internal container app: backend of the Dapr state store and
// pub/sub. Seed: "Service Architecture / Redis Container" (TCP :6379, internal
// only, persistence: snapshot every 60 s if >= 1 key changed) and "Resource
// Distribution" (CPU/memory per environment).
//
// Two deliberate departures from the seed, both for data safety:
// - exactly one replica: every replica would be an independent Redis, so
//   scaling out would split the state store and the streams (seed: 1-3 in prod);
// - maxmemory-policy noeviction instead of allkeys-lru: evicting keys of a
//   state store or of a stream loses acknowledged writes and events; writes
//   fail loudly instead when memory runs out.

param location string
param name string
param environmentName string

@description('Storage account for the Redis data volume (Azure Files, SMB).')
@minLength(3)
@maxLength(24)
param storageAccountName string

@description('User-assigned identity resource id used to read the Key Vault secret.')
param identityId string

@description('Versionless Key Vault URI of the Redis password secret.')
param redisPasswordSecretUri string

param image string = 'docker.io/library/redis:7.4-alpine'
param cpu string = '0.25'
param memory string = '0.5Gi'

@description('Redis maxmemory, below the container memory to leave room for fork-on-save.')
param maxMemory string = '256mb'

param tags object = {}

var shareName = 'redis-data'
var port = 6379

resource environment 'Microsoft.App/managedEnvironments@2025-01-01' existing = {
  name: environmentName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206: The share holds a Redis snapshot and append-only file that Redis rewrites continuously; zone-redundant (ZRS) storage is used, geo-replication of a single-node cache file adds cost without a usable failover.
  // checkov:skip=CKV_AZURE_35: Container Apps mounts Azure Files over SMB from its managed infrastructure; without VNet integration there is no subnet or trusted-service rule that admits it, so the default action stays Allow and access is by account key only.
  // checkov:skip=CKV_AZURE_59: Same as CKV_AZURE_35: the SMB mount from the Container Apps environment needs the public endpoint.
  // checkov:skip=CKV_AZURE_43: False positive: checkov reads the parameter's identifier as the name; main.bicep passes 'stredis' + uniqueString() (lowercase alphanumerics, at most 24) and the parameter is length-bounded.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Container Apps Azure Files volumes authenticate with the account key only.
    allowSharedKeyAccess: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    shareDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource share 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: fileService
  name: shareName
  properties: {
    shareQuota: 32
    enabledProtocols: 'SMB'
  }
}

resource environmentStorage 'Microsoft.App/managedEnvironments/storages@2025-01-01' = {
  parent: environment
  name: 'redis-data'
  properties: {
    azureFile: {
      accountName: storage.name
      // Container Apps Azure Files mounts support only account keys.
      accountKey: storage.listKeys().keys[0].value
      shareName: share.name
      accessMode: 'ReadWrite'
    }
  }
}

resource redis 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      // Internal TCP ingress: reachable as <app name>:6379 from apps in the
      // same environment only (seed: "Internal TCP ingress only").
      ingress: {
        external: false
        transport: 'tcp'
        targetPort: port
        exposedPort: port
      }
      secrets: [
        {
          name: 'redis-password'
          keyVaultUrl: redisPasswordSecretUri
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'redis'
          image: image
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          env: [
            {
              name: 'REDIS_PASSWORD'
              secretRef: 'redis-password'
            }
          ]
          command: [
            '/bin/sh'
            '-c'
          ]
          // The image's entrypoint drops root for the redis user (uid 999, which
          // owns the mounted share, see mountOptions). Persistence (seed): RDB
          // snapshot every 60 s when >= 1 key changed, plus the append-only
          // file so a crash loses at most one second of writes.
          args: [
            'exec docker-entrypoint.sh redis-server --port ${port} --requirepass "$REDIS_PASSWORD" --dir /data --save 60 1 --appendonly yes --appendfsync everysec --maxmemory ${maxMemory} --maxmemory-policy noeviction --loglevel notice'
          ]
          volumeMounts: [
            {
              volumeName: 'data'
              mountPath: '/data'
            }
          ]
          probes: [
            {
              type: 'Liveness'
              tcpSocket: {
                port: port
              }
              periodSeconds: 10
              failureThreshold: 3
            }
            {
              type: 'Readiness'
              tcpSocket: {
                port: port
              }
              periodSeconds: 5
            }
          ]
        }
      ]
      volumes: [
        {
          name: 'data'
          storageType: 'AzureFile'
          storageName: environmentStorage.name
          // Redis runs as uid/gid 999 in the official image; nobrl avoids
          // SMB byte-range lock failures on the AOF/RDB rewrite.
          mountOptions: 'uid=999,gid=999,dir_mode=0750,file_mode=0640,nobrl,mfsymlinks,cache=none'
        }
      ]
      scale: {
        minReplicas: 1
        maxReplicas: 1
      }
    }
  }
}

output name string = redis.name
@description('Address of Redis for the Dapr components.')
output host string = '${redis.name}:${port}'
