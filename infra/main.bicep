// Infrastructure for the customer-deletion function app on Flex Consumption.
// Modelled on Microsoft's azd templates (Azure-Samples/functions-quickstart-python-azd-timer, ...-python-http-azd,
// ...-python-azd-otel): the same Azure Verified Modules and versions, the same layout (app/api.bicep, app/rbac.bicep,
// app/vnet.bicep, app/storage-PrivateEndpoint.bicep), plus the app's own parts: the queues, the app settings of the
// docs/contract.md, and a Key Vault for the Partner Center client secret (app/keyvault.bicep).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the the environment which is used to generate a short unique hash used in all resources.')
param environmentName string

@minLength(1)
@description('Primary location for all resources & Flex Consumption Function App')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'eastus2euap'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string
@description('Put the storage account behind private endpoints and integrate the app with a virtual network.')
param vnetEnabled bool = false
param apiServiceName string = ''
param apiUserAssignedIdentityName string = ''
param applicationInsightsName string = ''
param appServicePlanName string = ''
param logAnalyticsName string = ''
param resourceGroupName string = ''
param storageAccountName string = ''
param keyVaultName string = ''
param vNetName string = ''
@description('Id of the user identity to be used for testing and debugging. This is not required in production. Leave empty if not needed.')
param principalId string = deployer().objectId
@description('Type of principalId: User for `azd up` from a workstation, ServicePrincipal for a pipeline.')
@allowed(['User', 'ServicePrincipal'])
param principalType string = 'User'
@description('Give principalId the data roles it needs to send a test request, read outcomes and set the Key Vault secret.')
param allowUserIdentityPrincipal bool = true

// Python 3.11 by default: the version the project's .venv develops and tests on, the one Microsoft's timer template
// uses, supported by Functions until Oct 2027 and offered by Flex Consumption in every region. 3.12 and 3.13 work too
// (requirements.txt picks azure-functions 1.x or 2.x by Python version); whether a region offers 3.13 on Flex:
// `az functionapp list-flexconsumption-runtimes --location <region> --runtime python`.
@allowed(['3.11', '3.12', '3.13'])
param pythonVersion string = '3.11'
@description('Flex Consumption scale limit. Partner Center allows 500 calls a minute per partner and PARTNER_CENTER_CALLS_PER_MINUTE paces each process, not the app: with many instances, lower this or that setting.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

// ---- The app's settings (docs/contract.md, "Settings"; defaults as in shared/config.py and shared/sweep.py) ----
param deleteCustomerQueue string = 'customer-deletions'
param pollOrdersQueue string = 'customer-deletion-polls'
param deletionOutcomesQueue string = 'customer-deletion-outcomes'
param partnerCenterBaseUrl string = 'https://api.partnercenter.microsoft.com'
param partnerCenterAuthorityHost string = 'https://login.microsoftonline.com'
@minLength(1)
@description('Tenant of the integration-sandbox partner (GUID or domain). Required: in Azure the app has no other credential Partner Center accepts.')
param partnerCenterTenantId string
@minLength(1)
@description('Client id of the sandbox partner\'s app registration.')
param partnerCenterClientId string
@secure()
@description('Client secret of that app registration. Empty: the Key Vault secret is not created; add it later with `az keyvault secret set`.')
param partnerCenterClientSecret string = ''
param partnerCenterScope string = 'https://api.partnercenter.microsoft.com/.default'
param pollIntervalSeconds string = '30'
param pollMaxIntervalSeconds string = '600'
param pollTimeoutSeconds string = '21600'
param protectedCustomerIds string = ''
param partnerCenterTimeoutSeconds string = '30'
param partnerCenterRetryBudgetSeconds string = '4'
param invocationWorkSeconds string = '10'
param partnerCenterCallsPerMinute string = '450'
@description('A DELETE still refused this long after its first refusal ends the request failed, naming the blockers; at most POLL_TIMEOUT_SECONDS.')
param deleteRefusalTimeoutSeconds string = '1800'
@allowed(['true', 'false'])
@description('true: cancel or suspend the customer\'s subscriptions (new commerce, Azure plan, SaaS, licence) and prove them final before the DELETE; false: only list them for the outcome, and let Partner Center decide.')
param clearSubscriptions string = 'true'
@minLength(1)
@description('NCRONTAB, six fields, UTC. %SWEEP_SCHEDULE% in sweep_customers/function.json: without it the host disables the sweep.')
param sweepSchedule string = '0 0 3 * * *'
@allowed(['off', 'report', 'delete'])
param sweepMode string = 'report'
param sweepInclude string = ''
param sweepExclude string = ''
param sweepMaxPerRun string = '25'
param sandboxCustomerLimit string = '75'
param sweepReportsQueue string = 'customer-sweep-reports'
@description('A customer the sweep first saw less than this many hours before a run is not selected (too_new); 0 switches the minimum age off.')
param sweepMinAgeHours string = '24'
@minLength(3)
@maxLength(63)
@description('The table (in the function app\'s storage account) that holds the sweep\'s first-seen record: 3-63 letters and digits, starting with a letter.')
param deletionRequestsTable string = 'deletionrequests'
@description('Finished rows of the request ledger are deleted this many days after they finished (by the sweep\'s runs), 1-3650.')
param ledgerRetentionDays string = '30'

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = !empty(apiServiceName) ? apiServiceName : '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentStorageContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'
var partnerCenterClientSecretName = 'partner-center-client-secret'

// Queue names: lower-cased as the host does. The app settings below and the queues the storage account creates come
// from these same variables, so they cannot disagree.
var deleteQueueName = toLower(deleteCustomerQueue)
var pollQueueName = toLower(pollOrdersQueue)
var outcomesQueueName = toLower(deletionOutcomesQueue)
var sweepReportsQueueName = toLower(sweepReportsQueue)
// The two trigger queues, their poison queues (the host moves a message there after maxDequeueCount; the app puts
// failed and timed-out requests into <DELETE_CUSTOMER_QUEUE>-poison), the outcomes queue and the sweep report queue.
// The app would create the ones it writes when missing; creating them here makes the account complete from the start.
var queueNames = [
  deleteQueueName
  '${deleteQueueName}-poison'
  pollQueueName
  '${pollQueueName}-poison'
  outcomesQueueName
  sweepReportsQueueName
]

// Every setting of docs/contract.md's table. PARTNER_CENTER_CLIENT_SECRET is a Key Vault reference (api module);
// PARTNER_CENTER_CLIENT_CERTIFICATE_PATH is not set: Flex Consumption cannot load certificates.
var contractAppSettings = {
  DELETE_CUSTOMER_QUEUE: deleteQueueName
  POLL_ORDERS_QUEUE: pollQueueName
  DELETION_OUTCOMES_QUEUE: outcomesQueueName
  PARTNER_CENTER_BASE_URL: partnerCenterBaseUrl
  PARTNER_CENTER_AUTHORITY_HOST: partnerCenterAuthorityHost
  PARTNER_CENTER_TENANT_ID: partnerCenterTenantId
  PARTNER_CENTER_CLIENT_ID: partnerCenterClientId
  PARTNER_CENTER_SCOPE: partnerCenterScope
  POLL_INTERVAL_SECONDS: pollIntervalSeconds
  POLL_MAX_INTERVAL_SECONDS: pollMaxIntervalSeconds
  POLL_TIMEOUT_SECONDS: pollTimeoutSeconds
  PROTECTED_CUSTOMER_IDS: protectedCustomerIds
  PARTNER_CENTER_TIMEOUT_SECONDS: partnerCenterTimeoutSeconds
  PARTNER_CENTER_RETRY_BUDGET_SECONDS: partnerCenterRetryBudgetSeconds
  INVOCATION_WORK_SECONDS: invocationWorkSeconds
  PARTNER_CENTER_CALLS_PER_MINUTE: partnerCenterCallsPerMinute
  DELETE_REFUSAL_TIMEOUT_SECONDS: deleteRefusalTimeoutSeconds
  CLEAR_SUBSCRIPTIONS: clearSubscriptions
  SWEEP_SCHEDULE: sweepSchedule
  SWEEP_MODE: sweepMode
  SWEEP_INCLUDE: sweepInclude
  SWEEP_EXCLUDE: sweepExclude
  SWEEP_MAX_PER_RUN: sweepMaxPerRun
  SANDBOX_CUSTOMER_LIMIT: sandboxCustomerLimit
  SWEEP_REPORTS_QUEUE: sweepReportsQueueName
  SWEEP_MIN_AGE_HOURS: sweepMinAgeHours
  DELETION_REQUESTS_TABLE: deletionRequestsTable
  LEDGER_RETENTION_DAYS: ledgerRetentionDays
}

// Organize resources in a resource group
resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// User assigned managed identity to be used by the function app to reach storage, Application Insights and Key Vault
// Assign specific roles to this identity in the RBAC module
module apiUserAssignedIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'apiUserAssignedIdentity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: !empty(apiUserAssignedIdentityName) ? apiUserAssignedIdentityName : '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
  }
}

// Create an App Service Plan to group applications under the same payment plan and SKU
module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
    location: location
    tags: tags
  }
}

module api './app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.name
    appServicePlanId: appServicePlan.outputs.resourceId
    runtimeName: 'python'
    runtimeVersion: pythonVersion
    storageAccountName: storage.outputs.name
    enableBlob: storageEndpointConfig.enableBlob
    enableQueue: storageEndpointConfig.enableQueue
    enableTable: storageEndpointConfig.enableTable
    deploymentStorageContainerName: deploymentStorageContainerName
    identityId: apiUserAssignedIdentity.outputs.resourceId
    identityClientId: apiUserAssignedIdentity.outputs.clientId
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appSettings: contractAppSettings
    partnerCenterClientSecretReference: keyVault.outputs.partnerCenterClientSecretReference
    virtualNetworkSubnetId: vnetEnabled ? serviceVirtualNetwork.outputs.appSubnetID : ''
  }
}

// Backing storage for the function app: the host's storage, the deployment container and the app's queues
module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // Disable local authentication methods as per policy
    dnsEndpointType: 'Standard'
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: vnetEnabled ? {
      defaultAction: 'Deny'
      bypass: 'None'
    } : {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [{name: deploymentStorageContainerName}]
    }
    queueServices: {
      queues: [for queueName in queueNames: {
        name: queueName
      }]
    }
    // The app's one table, from the same parameter as DELETION_REQUESTS_TABLE (the app would create it when missing)
    tableServices: {
      tables: [
        {
          name: deletionRequestsTable
        }
      ]
    }
    minimumTlsVersion: 'TLS1_2'  // Enforcing TLS 1.2 for better security
    location: location
    tags: tags
  }
}

// Define the configuration object locally to pass to the modules
var storageEndpointConfig = {
  enableBlob: true  // Required for AzureWebJobsStorage (host keys, locks, timer status), .zip deployment
  enableQueue: true  // Required: the queue triggers and the app's own sends use AzureWebJobsStorage's queue endpoint
  enableTable: true  // Required: the sweep's first-seen record is a table (DELETION_REQUESTS_TABLE) in this account
  enableFiles: false   // Not required, used in legacy scenarios
  allowUserIdentityPrincipal: allowUserIdentityPrincipal   // Allow the deployer to send a test request and set the secret
}

// Key Vault (RBAC) holding the Partner Center client secret, read by the app through a Key Vault reference
module keyVault 'app/keyvault.bicep' = {
  name: 'keyVault'
  scope: rg
  params: {
    name: !empty(keyVaultName) ? keyVaultName : '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    partnerCenterClientSecret: partnerCenterClientSecret
    partnerCenterClientSecretName: partnerCenterClientSecretName
  }
}

// Consolidated Role Assignments
module rbac 'app/rbac.bicep' = {
  name: 'rbacAssignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.name
    keyVaultName: keyVault.outputs.name
    managedIdentityPrincipalId: apiUserAssignedIdentity.outputs.principalId
    userIdentityPrincipalId: principalId
    userIdentityPrincipalType: principalType
    enableBlob: storageEndpointConfig.enableBlob
    enableQueue: storageEndpointConfig.enableQueue
    enableTable: storageEndpointConfig.enableTable
    allowUserIdentityPrincipal: storageEndpointConfig.allowUserIdentityPrincipal
  }
}

// Virtual Network & private endpoints to blob, queue and table storage
module serviceVirtualNetwork 'app/vnet.bicep' =  if (vnetEnabled) {
  name: 'serviceVirtualNetwork'
  scope: rg
  params: {
    location: location
    tags: tags
    vNetName: !empty(vNetName) ? vNetName : '${abbrs.networkVirtualNetworks}${resourceToken}'
  }
}

module storagePrivateEndpoint 'app/storage-PrivateEndpoint.bicep' = if (vnetEnabled) {
  name: 'servicePrivateEndpoint'
  scope: rg
  params: {
    location: location
    tags: tags
    virtualNetworkName: !empty(vNetName) ? vNetName : '${abbrs.networkVirtualNetworks}${resourceToken}'
    subnetName: vnetEnabled ? serviceVirtualNetwork.outputs.peSubnetName : '' // Keep conditional check for safety, though module won't run if !vnetEnabled
    resourceName: storage.outputs.name
    enableBlob: storageEndpointConfig.enableBlob
    enableQueue: storageEndpointConfig.enableQueue
    enableTable: storageEndpointConfig.enableTable
  }
}

// Monitor application with Azure Monitor - Log Analytics and Application Insights
module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: '${uniqueString(deployment().name, location)}-loganalytics'
  scope: rg
  params: {
    name: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module monitoring 'br/public:avm/res/insights/component:0.6.0' = {
  name: '${uniqueString(deployment().name, location)}-appinsights'
  scope: rg
  params: {
    name: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true // Entra authentication only: the identity needs Monitoring Metrics Publisher (rbac.bicep)
  }
}

// App outputs (azd stores them in the environment: `azd env get-value AZURE_STORAGE_ACCOUNT_NAME`)
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = api.outputs.SERVICE_API_NAME
output AZURE_FUNCTION_NAME string = api.outputs.SERVICE_API_NAME
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output PARTNER_CENTER_CLIENT_SECRET_NAME string = partnerCenterClientSecretName
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.name
