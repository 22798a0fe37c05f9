package mongostore

// FerretUpdateBatch exposes ferretUpdateBatch to the external tests.
const FerretUpdateBatch = ferretUpdateBatch
