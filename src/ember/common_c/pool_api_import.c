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

#define EMBER_SLOTS_API_CALL_(ret, name, params, args) \
    ret name params { return _ember_pool_api->name args; }
EMBER_SLOTS_API(EMBER_SLOTS_API_CALL_)
#undef EMBER_SLOTS_API_CALL_

void _ember_slot_wait_begin(uint32_t op, uint64_t c_uid, uint32_t count, uint64_t obj)
{
    _ember_pool_api->_ember_slot_wait_begin(op, c_uid, count, obj);
}

void _ember_slot_wait_end(void)
{
    _ember_pool_api->_ember_slot_wait_end();
}
