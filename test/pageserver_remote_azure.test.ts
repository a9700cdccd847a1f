/**
 * Issue 7, acceptance 1 on Azure Blob (Azurite) with a smaller workload (the
 * full pgbench run is pageserver_remote_s3.test.ts): see `roundTrip` in
 * pageserver_remote_support.ts.
 */
import { test } from "node:test";
import { AzureBlobStorage } from "../src/remote_storage/azure_blob.js";
import { AZURITE_ACCOUNT_KEY, startAzurite } from "./harness/azurite.js";
import { roundTrip } from "./pageserver_remote_support.js";

test("Azure Blob (Azurite): delete the local directory, attach with generation 2, pages identical", { timeout: 300_000 }, async () => {
  const az = await startAzurite();
  try {
    const admin = new AzureBlobStorage({ container: "strata-ps", connectionString: az.connectionString });
    await admin.container.create();
    await admin.close();
    process.env.AZURE_STORAGE_KEY = AZURITE_ACCOUNT_KEY;
    await roundTrip("azure", `azure://strata-ps/ps?endpoint=${encodeURIComponent(az.endpoint)}`);
  } finally {
    await az.stop();
  }
});
