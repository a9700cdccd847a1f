/**
 * Free loopback ports for test servers.
 *
 * The OS picks a free port (bind to port 0); we remember every port handed
 * out in this process so two servers of one test file never get the same one.
 * Another test file running concurrently can still race us between close and
 * the server's bind, so callers retry start-up on "address in use".
 */
import { createServer } from "node:net";

const handedOut = new Set<number>();

export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const addr = srv.address();
        const p = typeof addr === "object" && addr ? addr.port : 0;
        srv.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("could not find a free loopback port in 20 attempts");
}
