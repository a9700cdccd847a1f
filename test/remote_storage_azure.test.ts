/**
 * The conformance suite against the Azure Blob backend talking to Azurite
 * (a child process on a loopback port). The storage is built from an azure://
 * URL; the account comes from the endpoint and its key from AZURE_STORAGE_KEY.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { AzureBlobStorage } from "../src/remote_storage/azure_blob.js";
import { createRemoteStorage } from "../src/remote_storage/config.js";
import { parseRemotePath } from "../src/remote_storage/remote_path.js";
import { AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY, startAzurite } from "./harness/azurite.js";
import { remoteStorageConformance } from "./remote_storage_conformance.js";

const CONTAINER = "strata-test";

remoteStorageConformance({
  name: "Azure Blob (Azurite)",
  largeObjectBytes: 12 * 1024 * 1024,
  async open() {
    const server = await startAzurite();
    try {
      const admin = new AzureBlobStorage({ container: CONTAINER, connectionString: server.connectionString });
      await admin.container.create();
      const url = `azure://${CONTAINER}/conformance/run-${process.pid}?endpoint=${encodeURIComponent(server.endpoint)}&max_attempts=1`;
      const storage = createRemoteStorage(url, { env: { AZURE_STORAGE_KEY: AZURITE_ACCOUNT_KEY } });
      return {
        storage,
        async close() {
          await storage.close();
          await server.stop();
        },
      };
    } catch (err) {
      await server.stop();
      throw err;
    }
  },
});

describe("Azure backend specifics", () => {
  test("a missing container is a permanent error", async () => {
    const server = await startAzurite();
    try {
      const s = new AzureBlobStorage({ container: "no-such-container", account: AZURITE_ACCOUNT, accountKey: AZURITE_ACCOUNT_KEY, endpoint: server.endpoint });
      await assert.rejects(s.upload(parseRemotePath("x"), Buffer.from("x")), (e: Error & { code?: string; transient?: boolean }) => {
        assert.equal(e.code, "io_error", e.message);
        assert.equal(e.transient, false, e.message);
        return true;
      });
    } finally {
      await server.stop();
    }
  });
});
