// User-assigned managed identity shared by the container apps: pulls images
// from ACR and reads the Redis password from Key Vault.
// Seed: "Security Architecture" (4. Identity: managed identity for Azure service
// authentication) and "Container Security" (private registry).

param location string
param name string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
