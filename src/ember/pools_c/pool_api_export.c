/*
 * pool_api_export.c -- the table of pool functions that ember.pools_c._pools
 * exports to the other extensions in a PyCapsule (see pool_api.h).  Death
 * mid-operation: nothing here touches shared memory.
 */
#include "pool_api.h"

#define EMBER_POOL_API_INIT_(ret, name, params, args) .name = ember_pool_##name,
#define EMBER_SLOTS_API_INIT_(ret, name, params, args) .name = name,
static const ember_pool_api_t _ember_pool_api = {
    .table_size = sizeof(ember_pool_api_t),
    EMBER_POOL_API(EMBER_POOL_API_INIT_)
    EMBER_SLOTS_API(EMBER_SLOTS_API_INIT_)
    ._ember_slot_wait_begin = _ember_slot_wait_begin,
    ._ember_slot_wait_end = _ember_slot_wait_end,
};
#undef EMBER_POOL_API_INIT_
#undef EMBER_SLOTS_API_INIT_

const void *ember_pool_api_table(void)
{
    return &_ember_pool_api;
}
