// The remediation Function app: Linux, Python 3.11, system-assigned managed identity, its own
// storage (Durable task hub and the incident table) and Application Insights.
// Assign infra/role-definition.json (scoped to the subscriptions or resource groups to heal) to the
// app's identity after deployment; nothing here grants rights on the VMs by itself.

@description('Name prefix for the resources this template creates.')
param prefix string = 'selinuxfix'

@description('Region of the Function app.')
param location string = resourceGroup().location

@description('Comma-separated subscription ids the app may heal (REMEDIATION_SUBSCRIPTIONS).')
param subscriptions string

@description('Optional comma-separated Log Analytics workspace ids with VM heartbeats.')
param heartbeatWorkspaceIds string = ''

@description('Start in dry-run mode: record and report, never repair. Turn off once the incidents look right.')
param dryRun bool = true

@description('Require an operator approval before a repaired disk is swapped in.')
param approvalRequired bool = false

var storageName = toLower('${prefix}${uniqueString(resourceGroup().id)}')

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take(storageName, 24)
  location: location
  sku: { name: 'Standard_LRS' }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${prefix}-insights'
  location: location
  kind: 'web'
  properties: { Application_Type: 'web' }
}

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: '${prefix}-plan'
  location: location
  sku: { name: 'Y1', tier: 'Dynamic' }
  kind: 'functionapp'
  properties: { reserved: true }
}

var storageConnection = 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'

resource app 'Microsoft.Web/sites@2023-12-01' = {
  name: '${prefix}-app-${uniqueString(resourceGroup().id)}'
  location: location
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      linuxFxVersion: 'Python|3.11'
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      appSettings: [
        { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
        { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'python' }
        { name: 'AzureWebJobsStorage', value: storageConnection }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insights.properties.ConnectionString }
        { name: 'REMEDIATION_SUBSCRIPTIONS', value: subscriptions }
        { name: 'REMEDIATION_HEARTBEAT_WORKSPACE_IDS', value: heartbeatWorkspaceIds }
        { name: 'REMEDIATION_DRY_RUN', value: string(dryRun) }
        { name: 'REMEDIATION_APPROVAL_REQUIRED', value: string(approvalRequired) }
        { name: 'REMEDIATION_SWEEP_SCHEDULE', value: '0 */5 * * * *' }
      ]
    }
  }
}

output functionAppName string = app.name
output principalId string = app.identity.principalId
