// The Flex Consumption function app, as in Microsoft's azd templates (infra/app/api.bicep), plus the Key Vault
// reference identity and the telemetry settings this app needs.
param name string
@description('Primary location for all resources & Flex Consumption Function App')
param location string = resourceGroup().location
param tags object = {}
param applicationInsightsName string = ''
param appServicePlanId string
@description('The app\'s own settings (docs/contract.md); the identity and telemetry settings below win over them.')
param appSettings object = {}
param runtimeName string
param runtimeVersion string
// The azd service name: azure.yaml's `services.api` finds the app by this tag.
param serviceName string = 'api'
param storageAccountName string
param deploymentStorageContainerName string
param virtualNetworkSubnetId string = ''
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 100
param identityId string = ''
param identityClientId string = ''
param enableBlob bool = true
param enableQueue bool = false
param enableTable bool = false
param enableFile bool = false
@description('`@Microsoft.KeyVault(...)` reference of the Partner Center client secret; resolved with the user-assigned identity.')
param partnerCenterClientSecretReference string

@allowed(['SystemAssigned', 'UserAssigned'])
param identityType string = 'UserAssigned'

var applicationInsightsIdentity = 'ClientId=${identityClientId};Authorization=AAD'
var kind = 'functionapp,linux'

// Create base application settings
var baseAppSettings = {
  // Only include required credential settings unconditionally
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId

  // Application Insights settings are always included. The resource has local authentication disabled, so the host
  // authenticates with the identity named here. The Python worker's Azure Monitor exporter reads the same setting
  // (azure-monitor-opentelemetry-exporter 1.0.0b36 and later; requirements.txt's azure-monitor-opentelemetry>=1.6.12 brings 1.0.0b40 or later) and builds a ManagedIdentityCredential from its ClientId.
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: applicationInsightsIdentity
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  // The worker exports its own logs and traces through OpenTelemetry (host.json "telemetryMode": "OpenTelemetry"),
  // instead of forwarding each log record to the host.
  // No PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME, on purpose: it would limit the export to one logger's tree and drop
  // the SDKs' warnings and errors with it. The app raises the SDK loggers to Warning instead, so their INFO chatter
  // (HTTP dumps, the exporter's own sends) is not exported, and an idle worker exports no log record
  // (docs/operations.md, "Levels, not a logger name").
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // No PYTHON_THREADPOOL_THREAD_COUNT, on purpose: the worker's default pool (min(32, cpus + 4) threads) is enough.
  // A message waiting for a thread keeps its lease, INVOCATION_WORK_SECONDS counts from the function's start, and
  // Partner Center's rate limit, not the thread count, bounds the throughput (docs/local-development.md, "Local Functions host"; docs/reliability.md).
  // DefaultAzureCredential and ManagedIdentityCredential() in the worker pick the user-assigned identity from
  // AZURE_CLIENT_ID; without it they look for a system-assigned identity, which this app does not have.
  AZURE_CLIENT_ID: identityClientId

  // A Key Vault reference, resolved by the platform with keyVaultReferenceIdentity (below).
  PARTNER_CENTER_CLIENT_SECRET: partnerCenterClientSecretReference
}

// Dynamically build storage endpoint settings based on feature flags
var blobSettings = enableBlob ? { AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob } : {}
var queueSettings = enableQueue ? { AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue } : {}
var tableSettings = enableTable ? { AzureWebJobsStorage__tableServiceUri: stg.properties.primaryEndpoints.table } : {}
var fileSettings = enableFile ? { AzureWebJobsStorage__fileServiceUri: stg.properties.primaryEndpoints.file } : {}

// Merge all app settings
var allAppSettings = union(
  appSettings,
  blobSettings,
  queueSettings,
  tableSettings,
  fileSettings,
  baseAppSettings
)

resource stg 'Microsoft.Storage/storageAccounts@2022-09-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = if (!empty(applicationInsightsName)) {
  name: applicationInsightsName
}

// Create a Flex Consumption Function App to host the API
module api 'br/public:avm/res/web/site:0.15.1' = {
  name: '${serviceName}-flex-consumption'
  params: {
    kind: kind
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': serviceName })
    serverFarmResourceId: appServicePlanId
    managedIdentities: {
      systemAssigned: identityType == 'SystemAssigned'
      userAssignedResourceIds: [
        '${identityId}'
      ]
    }
    // keyVaultReferenceIdentity: a Key Vault reference is resolved with the system-assigned identity unless this
    // names the user-assigned one.
    keyVaultAccessIdentityResourceId: identityType == 'UserAssigned' ? identityId : ''
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${stg.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: identityType == 'SystemAssigned' ? 'SystemAssignedIdentity' : 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityType == 'UserAssigned' ? identityId : ''
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: runtimeName
        version: runtimeVersion
      }
    }
    siteConfig: {
      alwaysOn: false
    }
    virtualNetworkSubnetId: !empty(virtualNetworkSubnetId) ? virtualNetworkSubnetId : null
    appSettingsKeyValuePairs: allAppSettings
  }
}

output SERVICE_API_NAME string = api.outputs.name
// Ensure output is always string, handle potential null from module output if SystemAssigned is not used
output SERVICE_API_IDENTITY_PRINCIPAL_ID string = identityType == 'SystemAssigned' ? api.outputs.?systemAssignedMIPrincipalId ?? '' : ''
