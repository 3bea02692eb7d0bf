/// <reference path="./wsprism-plugin-types.d.ts" />
declare module 'wsprism:plugin/backend@0.2.0' {
  /**
   * Sends the request, bounded by the upstream's `timeout_ms` and by the
   * call's wall-clock bound.
   */
  export function call(req: Request): Response;
  export type HostError = import('wsprism:plugin/types@0.2.0').HostError;
  /**
   * An HTTP request to a named upstream.
   */
  export interface Request {
    /**
     * Upstream name from the tenant's config, e.g. `main`.
     */
    upstream: string,
    /**
     * `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
     */
    method: string,
    /**
     * Path (and query) appended to the upstream URL; must start with `/`.
     */
    path: string,
    /**
     * Request headers (hop-by-hop headers and `host` are ignored).
     */
    headers: Array<[string, string]>,
    /**
     * Request body.
     */
    body: Uint8Array,
  }
  /**
   * The upstream's answer (any status; redirects are not followed).
   */
  export interface Response {
    /**
     * HTTP status code.
     */
    status: number,
    /**
     * Response headers.
     */
    headers: Array<[string, string]>,
    /**
     * Response body, at most 1 MiB.
     */
    body: Uint8Array,
  }
}
