// Key Vault with RBAC authorization, holding the Partner Center client secret. Plain resources (Microsoft's Flex
// templates have no Key Vault module to copy). The app reads the secret through a Key Vault reference; its identity
// gets Key Vault Secrets User on this vault (rbac.bicep).
@description('Key Vault name: 3-24 characters, letters, digits and hyphens.')
@minLength(3)
@maxLength(24)
param name string
param location string = resourceGroup().location
param tags object = {}
@secure()
@description('The secret value. Empty: no secret is created here; set it later with `az keyvault secret set`.')
param partnerCenterClientSecret string = ''
param partnerCenterClientSecretName string = 'partner-center-client-secret'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7 // the shortest: `azd down --purge` and a new `azd up` can reuse the name soon
    // Flex Consumption resolves Key Vault references only from a vault that is not network restricted, even with
    // virtual network integration; access stays limited by RBAC.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource partnerCenterSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(partnerCenterClientSecret)) {
  parent: vault
  name: partnerCenterClientSecretName
  properties: {
    value: partnerCenterClientSecret
    contentType: 'client secret of the integration-sandbox partner\'s app registration'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
// No version: the reference follows the latest version of the secret (rotation without a new deployment).
output partnerCenterClientSecretReference string = '@Microsoft.KeyVault(VaultName=${vault.name};SecretName=${partnerCenterClientSecretName})'
