// Production environment (seed "Resource Distribution / Production
// Environment" and "Environment Isolation": dedicated, Premium SKU).
// Values that change per run come from the environment; infra/deploy.sh sets them.
using '../main.bicep'

param environmentName = 'prod'
param imageTag = readEnvironmentVariable('IMAGE_TAG', 'latest')
param deployApps = bool(readEnvironmentVariable('DEPLOY_APPS', 'true'))

// ProductService / OrderService: High Availability, 2-20 replicas, 1.0 CPU, 2Gi.
param serviceCpu = '1.0'
param serviceMemory = '2Gi'
param serviceMinReplicas = 2
param serviceMaxReplicas = 20

// Redis: Persistent, 0.5 CPU, 1Gi. One replica, not the seed's 1-3: extra
// replicas would be independent Redis servers (see modules/redis.bicep).
param redisCpu = '0.5'
param redisMemory = '1Gi'
param redisMaxMemory = '640mb'

param registrySku = 'Premium'
param logRetentionDays = 90

param redisPassword = readEnvironmentVariable('REDIS_PASSWORD')
param deployerPrincipalId = readEnvironmentVariable('DEPLOYER_PRINCIPAL_ID', '')
param deployerPrincipalType = readEnvironmentVariable('DEPLOYER_PRINCIPAL_TYPE', 'ServicePrincipal')

param openAiCapacity = 30
