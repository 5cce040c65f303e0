/*
 * fleet_share_guard: a Mosquitto 2.0 plugin that refuses shared subscriptions
 * ($share/{group}/{filter}) on the listener it is loaded for: the vans' (fleet.conf).
 *
 * Why (docs/mosquitto/README.md, "Shared subscriptions"): Mosquitto 2.0's acl_file
 * never judges a SUBSCRIBE (security_default.c answers every subscribe check with
 * "allowed"), it checks "read" on each message as it is delivered. For a shared
 * subscription the broker first picks the group's next member, round-robin, and only
 * then checks that member's "read": a van that joins $share/ingest/... is handed its
 * turn of the group's messages, which its ACL then refuses, so they are dropped, not
 * passed on to an ingest worker. One van in the group halves the fleet's uplink.
 *
 * What it does: every SUBSCRIBE whose filter starts with "$share" is denied, so the
 * broker answers SUBACK 0x87 (Not authorized; 0x80 for MQTT 3.1.1) and the van never
 * joins a group; every other check (UNSUBSCRIBE included: leaving a group is harmless)
 * is deferred to the next ACL source, the listener's acl_file. Mosquitto asks a
 * listener's plugins before its acl_file, and the first answer that is not "defer"
 * decides.
 *
 * Build (Debian: apt-get install gcc libc6-dev mosquitto-dev):
 *   gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o fleet_share_guard.so fleet_share_guard.c
 * Install it as /usr/lib/mosquitto/fleet_share_guard.so and load it on the vans'
 * listener only (fleet.conf: "plugin /usr/lib/mosquitto/fleet_share_guard.so"):
 * ingest's workers need their shared subscription on the services' listener.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static const char SHARE_PREFIX[] = "$share";

static mosquitto_plugin_id_t *plugin_id = NULL;

static int acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *id;

	(void)event;
	(void)userdata;

	if(ed->access != MOSQ_ACL_SUBSCRIBE){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	if(ed->topic == NULL || strncmp(ed->topic, SHARE_PREFIX, sizeof(SHARE_PREFIX) - 1) != 0){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	id = mosquitto_client_id(ed->client);
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"fleet_share_guard: denied shared subscription %s to %s",
			ed->topic, id != NULL ? id : "(no id)");
	return MOSQ_ERR_ACL_DENIED;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, acl_check, NULL);
}
