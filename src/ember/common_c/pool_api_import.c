/*
 * pool_api_import.c -- compiled into the extensions that use pools but do
 * not contain pool.c (channels, sync): each ember_pool_* function they call
 * is a one-line call through the table ember.pools_c._pools exports (see
 * pool_api.h).  Death mid-operation: nothing here touches shared memory.
 */
#include "pool_api.h"

#include <stddef.h>

static const ember_pool_api_t *_ember_pool_api;

ember_rc_t ember_pool_api_set(const void *table)
{
    const ember_pool_api_t *t = table;
    if (!t)
        return EMBER_ERR_INVALID_ARG;
    if (t->table_size != sizeof(ember_pool_api_t))
        return EMBER_ERR_VERSION;
    _ember_pool_api = t;
    return EMBER_OK;
}

#define EMBER_POOL_API_CALL_(ret, name, params, args) \
    ret ember_pool_##name params { return _ember_pool_api->name args; }
EMBER_POOL_API(EMBER_POOL_API_CALL_)
#undef EMBER_POOL_API_CALL_
