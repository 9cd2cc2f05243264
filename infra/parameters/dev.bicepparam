// Development environment (seed "Resource Distribution / Development
// Environment" and "Environment Isolation": 1 region, Basic SKU).
// Values that change per run come from the environment; infra/deploy.sh sets them.
using '../main.bicep'

param environmentName = 'dev'
param imageTag = readEnvironmentVariable('IMAGE_TAG', 'latest')
param deployApps = bool(readEnvironmentVariable('DEPLOY_APPS', 'true'))

// ProductService / OrderService: Basic, 1-3 replicas, 0.5 CPU, 1Gi.
param serviceCpu = '0.5'
param serviceMemory = '1Gi'
param serviceMinReplicas = 1
param serviceMaxReplicas = 3

// Redis: Minimal, 1 replica, 0.25 CPU, 0.5Gi.
param redisCpu = '0.25'
param redisMemory = '0.5Gi'
param redisMaxMemory = '256mb'

param registrySku = 'Basic'
param logRetentionDays = 30

param redisPassword = readEnvironmentVariable('REDIS_PASSWORD')
param deployerPrincipalId = readEnvironmentVariable('DEPLOYER_PRINCIPAL_ID', '')
param deployerPrincipalType = readEnvironmentVariable('DEPLOYER_PRINCIPAL_TYPE', 'ServicePrincipal')

param openAiCapacity = 10
